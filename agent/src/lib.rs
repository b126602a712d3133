//! The guest side of Airlock's microVM mode.
//!
//! - [`protocol`]: the framed messages the shim and the agent exchange over the VM's control
//!   port (a virtio-serial port named [`protocol::PORT_NAME`]), shared by both sides.
//! - [`modules`]: which kernel modules the guest needs and in which order they load
//!   (from `modules.dep`), used by the initramfs builder on the host and by the agent in the
//!   guest.
//! - [`guest`]: what the agent does as the guest's PID 1 (mounts, module loading, finding
//!   its control port); Linux-only system calls, exercised by the VM tests.
//! - [`processes`]: the processes it runs for the host, [`confine`]: the policy each is
//!   confined by (namespaces, cgroup, capabilities, seccomp), [`cgroups`]: the guest's
//!   cgroup v2 tree that carries the containers' limits, [`oom`]: the OOM kills in it.

pub mod cgroups;
pub mod confine;
pub mod guest;
pub mod modules;
pub mod oom;
pub mod processes;
pub mod protocol;
pub mod stdin;
pub mod terminal;
