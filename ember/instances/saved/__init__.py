"""The saved-VM core: one model (`SavedVM`), one layout (`SavedVMFiles`), one path.

Standby, named snapshots, fork and restore-into are compositions of these steps
(one module per step): `capture` (pause, save, then resume or not), `place`
(copy a saved VM's files into another directory of the same shape), `restore`
(the one path from Standby to Running), `identity` (a fork's network identity
and the guest clock, through the agent), `compress` (background compression,
raw again, recovery after a crash). See ember/snapshots/README.md.
"""

from ember.instances.saved.capture import capture_saved_vm
from ember.instances.saved.compress import (
    SavedSlot,
    ensure_raw_memory,
    recover_saved,
    start_compression,
)
from ember.instances.saved.place import copy_disks, place_saved_vm
from ember.instances.saved.restore import RESTORE_STEPS, Step, discard_saved, restore
from ember.instances.saved.slots import await_vmm_exit, cancel_instance_jobs, instance_slot

__all__ = [
    "RESTORE_STEPS",
    "SavedSlot",
    "Step",
    "await_vmm_exit",
    "cancel_instance_jobs",
    "capture_saved_vm",
    "copy_disks",
    "discard_saved",
    "ensure_raw_memory",
    "instance_slot",
    "place_saved_vm",
    "recover_saved",
    "restore",
    "start_compression",
]
