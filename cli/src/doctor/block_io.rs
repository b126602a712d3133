//! The block I/O weight check: whether containers may ask for `blockIO.weight` on this node.
//! The shim's runtime refuses a weight the node cannot enforce with the same words
//! ([`airlock_state::blkio::BlockIoProbe::cannot_enforce`]).

use super::{Check, Probe, Status};
use airlock_state::blkio::BlockIoProbe;

pub(super) fn block_io(p: &Probe) -> Check {
    const NAME: &str = "block I/O weight";
    let probe = BlockIoProbe::detect_under(&p.root);
    match (probe.cannot_enforce("weight"), probe.weight_file) {
        (Some(why), _) => Check::new(
            NAME,
            Status::Warn,
            "not enforceable: containers that set linux.resources.blockIO.weight are refused \
             (throttles work)",
            why,
        ),
        (None, Some(file)) => Check::new(NAME, Status::Ok, format!("enforced through {file}"), ""),
        (None, None) => Check::new(
            NAME,
            Status::Ok,
            "no cgroup with the io controller to look at yet: the kernel answers at create",
            "",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::fake;
    use super::*;

    const V1_MOUNTINFO: &str =
        "35 25 0:30 / /sys/fs/cgroup/blkio rw,nosuid - cgroup cgroup rw,blkio\n";

    #[test]
    fn a_v1_node_without_bfq_is_warned_with_the_fix() {
        let (_d, p) = fake(&[
            ("/proc/self/mountinfo", V1_MOUNTINFO),
            ("/sys/fs/cgroup/blkio/blkio.throttle.read_bps_device", ""),
            (
                "/sys/block/vda/queue/scheduler",
                "none [mq-deadline] kyber\n",
            ),
        ]);
        let c = block_io(&p);
        assert_eq!(c.status, Status::Warn, "{c}");
        assert!(
            c.fix.contains("cannot enforce blockIO.weight") && c.fix.contains("vda: mq-deadline"),
            "{c}"
        );
    }

    #[test]
    fn bfq_is_ok() {
        let (_d, p) = fake(&[
            ("/proc/self/mountinfo", V1_MOUNTINFO),
            ("/sys/fs/cgroup/blkio/blkio.bfq.weight", "100\n"),
        ]);
        let c = block_io(&p);
        assert_eq!(c.status, Status::Ok, "{c}");
        assert!(c.found.contains("blkio.bfq.weight"), "{c}");
    }
}
