"""What a create asks of egress, what the host keeps, and what the API shows.

`network.egress` is Hypeman's (`enabled`, `enforcement.mode`) plus one Ember
extension, `policy` (allow/deny lists, `ember/egress/policy.py`). An instance is
mediated when it asks for `enabled: true`, gives `credentials`, or gives a
policy; it then gets its own CA, installed in its guest at every boot, and all
its TCP (mode `all`) or its ports 80/443 (`http_https_only`) go through the proxy.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from ember.egress.credentials import Credential, CredentialRequest, InjectRule, plan_credentials
from ember.egress.policy import EgressPolicy, normalise
from ember.errors import InvalidArgument

Mode = Literal["all", "http_https_only"]


class EgressEnforcement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Mode = Field(
        default="all",
        description="`all`: every TCP connection goes through the proxy; "
        "`http_https_only`: ports 80 and 443 only (other TCP is held to the policy's "
        "addresses by nftables)",
    )


class EgressRequest(BaseModel):
    """Hypeman's `network.egress`, plus Ember's `policy`."""

    model_config = ConfigDict(extra="forbid")

    enabled: StrictBool = False
    enforcement: EgressEnforcement | None = None
    policy: EgressPolicy | None = Field(
        default=None, description="Ember extension: allow/deny lists of domains and CIDRs"
    )


class EgressPlan(BaseModel):
    """What the host keeps for one mediated instance (persisted 0600: holds secrets)."""

    mode: Mode = "all"
    policy: EgressPolicy = Field(default_factory=EgressPolicy)
    credentials: list[Credential] = Field(default_factory=list)


class CredentialView(BaseModel):
    source_env: str
    inject: list[InjectRule]


class EgressView(BaseModel):
    """`GET /instances/{id}/egress`: the mediation of one instance, without secrets."""

    mode: Mode
    policy: EgressPolicy
    credentials: dict[str, CredentialView] = Field(
        description="Keyed by the guest's env var, which holds a placeholder"
    )
    ca_certificate: str = Field(description="PEM of the instance's CA, trusted by its guest")

    @classmethod
    def of(cls, plan: EgressPlan, ca_pem: str) -> EgressView:
        return cls(
            mode=plan.mode,
            policy=plan.policy,
            credentials={
                c.name: CredentialView(source_env=c.source_env, inject=c.inject)
                for c in plan.credentials
            },
            ca_certificate=ca_pem,
        )


def plan_egress(
    request: EgressRequest | None,
    credentials: dict[str, CredentialRequest] | None,
    env: dict[str, str],
    *,
    networked: bool,
) -> tuple[EgressPlan | None, dict[str, str]]:
    """Validate the create's egress fields; the plan (None: not mediated) and the env
    the guest gets (placeholders for credentials, real values left out)."""
    explicit_off = (
        request is not None and "enabled" in request.model_fields_set and not (request.enabled)
    )
    given_policy = request.policy if request else None
    policy = normalise(given_policy, "network.egress.policy") if given_policy else None
    wanted = bool(credentials) or policy is not None or (request is not None and request.enabled)
    if not wanted:
        return None, env
    if explicit_off:
        given = "credentials" if credentials else "network.egress.policy"
        raise InvalidArgument(
            f"{given}: needs the mediated egress path; leave out network.egress.enabled or "
            "set it to true"
        )
    if not networked:
        raise InvalidArgument("network.egress: mediated egress needs the instance's network")
    planned, guest_env = plan_credentials(credentials or {}, env)
    mode: Mode = request.enforcement.mode if request and request.enforcement else "all"
    return EgressPlan(mode=mode, policy=policy or EgressPolicy(), credentials=planned), guest_env
