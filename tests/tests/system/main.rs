//! The whole-system tests, one test binary: the facade, the agent and the fixtures are linked
//! once, not once per file (as ripgrep keeps a single `tests/` binary). Each module was its
//! own binary before; run one with a filter, e.g. `cargo test -p meshanics-tests --test
//! system -- facade_pull::`.
//!
//! Two tests keep a binary of their own: `connections_e2e` installs a process-wide log
//! subscriber to search every log line for secrets, and `power_loss` needs the agent built with
//! the `failpoints` feature.

mod agent_e2e; // registry -> facade -> the agent's update cycle, configured like a device
mod agent_e2e_faults; // the same chain with a tampered blob and a stale timestamp
mod agent_files; // ModelPack and ORAS artifacts through registry and facade, applied as files
mod agent_kill_campaign; // the agent binary SIGKILLed at random moments of an update
mod agent_kill_resume; // the agent binary SIGKILLed mid-download converges and resumes blobs
mod agent_pull; // the agent pulling by digest from the registry behind mutual TLS
mod agent_service; // the update cycle and service loop: systemd notify, stop and resume
mod agent_slots; // several targets (an image, a model as files): a slot each, a failed check rolls back one alone
mod agent_sync_and_run; // the agent binary's `sync --once`, `run` and `status` end to end
mod agent_waves; // signed rollout waves: download ahead, apply when the wave opens, tampering refused
mod connections_tags; // tag listing and import against paginating and failing registries
mod facade_auth; // upstream Basic and bearer-token auth through the facade
mod facade_budgets; // handshake, connection and idle budgets against floods and PINGs
mod facade_cache; // the content-addressed cache: one upstream fetch per digest, failures, eviction, ranges
mod facade_cluster; // replicas on one PostgreSQL: changes seen by all within a second, outages
mod facade_faults; // the facade binary against a misbehaving upstream, cache off and on: no leaks
mod facade_https; // an HTTPS upstream with a private CA
mod facade_malicious; // a malicious upstream never gets wrong bytes to a device
mod facade_ops; // health, metrics and graceful shutdown on the operator listener
mod facade_publish; // meshctl publish: checked against what is served, verified by devices, shared by replicas
mod facade_pull; // skopeo pulling through the facade: bytes, HEAD, Range, HTTP/2
mod facade_redirects; // where an upstream's redirects may lead, its 401s and its 206s
mod facade_refusals; // every refusal of the device API, none reaching the upstream
mod facade_replicas; // two facade replicas, one SIGKILLed mid-pull, behind HAProxy or the agent's URL list
mod head_answers; // no HEAD answer carries a body, over HTTP/1.1 and HTTP/2 (h2 client, curl)
mod layout_registry; // meshanics-layout-registry as skopeo sees it
mod providers; // Google and AWS token providers against protocol-true local servers
mod upstream;
mod upstream_lengths; // upstream lengths that cannot match the digest are refused before headers // the fixtures themselves: sample images the real registry accepts
