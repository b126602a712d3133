//! containerd runtime-v2 shim for Airlock.
