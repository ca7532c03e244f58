"""Many Ember hosts behind one endpoint: hosts register in etcd (`member`), `ember gateway`
places and proxies (`gateway`, `placement`), both through `discovery.Discovery` (see
README.md). Nothing here runs on a host without cluster settings."""
