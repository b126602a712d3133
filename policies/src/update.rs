//! Checks a Task.Update (new `LinuxResources` for a running container) before anything is
//! written: values the kernel would refuse halfway through (leaving some limits changed and
//! others not), and the policy's ceilings, which an update may not lift (the policy is a
//! ceiling for the container's whole life, not only at create).

use oci_spec::runtime::LinuxResources;

use crate::{Error, Policy, Result};

/// What a policy keeps enforcing on updates of a container it created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateRules {
    policy: String,
    /// Ceiling of pids.max.
    pids: Option<i64>,
}

impl Policy {
    /// The rules [`UpdateRules::check`] applies to updates of a container created under this
    /// policy.
    pub fn update_rules(&self) -> UpdateRules {
        UpdateRules {
            policy: self.name.clone(),
            pids: self.limits.pids,
        }
    }
}

/// CPU bandwidth period the kernel accepts (cpu.max / cpu.cfs_period_us), microseconds.
const CPU_PERIOD_US: std::ops::RangeInclusive<u64> = 1_000..=1_000_000;
/// Smallest CPU quota the kernel accepts, microseconds.
const CPU_QUOTA_MIN_US: i64 = 1_000;
/// cgroup v1 cpu.shares range (mapped to cpu.weight on v2).
const CPU_SHARES: std::ops::RangeInclusive<u64> = 2..=262_144;

fn invalid(field: &'static str, value: impl ToString, hint: &str) -> Error {
    Error::InvalidUpdate {
        field,
        value: value.to_string(),
        hint: hint.to_string(),
    }
}

impl UpdateRules {
    /// Ok when `res` can be applied as a whole and stays under the policy's ceilings.
    pub fn check(&self, res: &LinuxResources) -> Result<()> {
        if let Some(cpu) = res.cpu() {
            if let Some(p) = cpu.period() {
                if !CPU_PERIOD_US.contains(&p) {
                    return Err(invalid(
                        "cpu.period",
                        p,
                        "the kernel takes 1000 to 1000000 microseconds; send a period in that range",
                    ));
                }
            }
            if let Some(q) = cpu.quota() {
                if q > 0 && q < CPU_QUOTA_MIN_US {
                    return Err(invalid(
                        "cpu.quota",
                        q,
                        "the kernel takes at least 1000 microseconds per period (or -1 for no limit)",
                    ));
                }
            }
            if let Some(s) = cpu.shares() {
                if s != 0 && !CPU_SHARES.contains(&s) {
                    return Err(invalid(
                        "cpu.shares",
                        s,
                        "shares range from 2 to 262144 (1024 is the default weight)",
                    ));
                }
            }
        }
        if let Some(m) = res.memory() {
            for (field, v) in [
                ("memory.limit", m.limit()),
                ("memory.swap", m.swap()),
                ("memory.reservation", m.reservation()),
            ] {
                if let Some(v) = v.filter(|v| *v < -1) {
                    return Err(invalid(field, v, "use bytes, or -1 for no limit"));
                }
            }
        }
        if let (Some(ceiling), Some(p)) = (self.pids, res.pids()) {
            let asked = p.limit();
            if asked <= 0 || asked > ceiling {
                return Err(Error::Refused {
                    policy: self.policy.clone(),
                    field: "linux.resources.pids.limit",
                    asked: if asked <= 0 {
                        format!("{asked} (no limit)")
                    } else {
                        asked.to_string()
                    },
                    hint: format!("its pids ceiling is {ceiling}; ask for 1 to {ceiling}"),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::builtin;
    use oci_spec::runtime::LinuxResources;

    fn res(json: &str) -> LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn good_updates_pass() {
        let r = builtin("agent-strict").unwrap().update_rules();
        for ok in [
            r#"{"memory":{"limit":67108864}}"#,
            r#"{"memory":{"limit":-1}}"#,
            r#"{"pids":{"limit":42}}"#,
            r#"{"pids":{"limit":512}}"#,
            r#"{"cpu":{"quota":50000,"period":100000}}"#,
            r#"{"cpu":{"quota":-1}}"#,
            r#"{"cpu":{"shares":2048}}"#,
            r#"{}"#,
        ] {
            r.check(&res(ok)).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn bad_values_name_the_field_and_the_range() {
        let r = builtin("baseline").unwrap().update_rules();
        for (bad, field, hint) in [
            (r#"{"cpu":{"period":100}}"#, "cpu.period", "1000 to 1000000"),
            (r#"{"cpu":{"quota":500}}"#, "cpu.quota", "at least 1000"),
            (r#"{"cpu":{"shares":1}}"#, "cpu.shares", "2 to 262144"),
            (
                r#"{"memory":{"limit":-5}}"#,
                "memory.limit",
                "-1 for no limit",
            ),
        ] {
            let e = r.check(&res(bad)).unwrap_err().to_string();
            assert!(e.contains(field) && e.contains(hint), "{bad}: {e}");
        }
    }

    #[test]
    fn the_pids_ceiling_holds_after_create() {
        let r = builtin("agent-strict").unwrap().update_rules();
        for bad in [r#"{"pids":{"limit":513}}"#, r#"{"pids":{"limit":-1}}"#] {
            let e = r.check(&res(bad)).unwrap_err().to_string();
            assert!(
                e.contains("agent-strict") && e.contains("pids.limit") && e.contains("512"),
                "{bad}: {e}"
            );
        }
        // baseline sets no ceiling.
        let r = builtin("baseline").unwrap().update_rules();
        r.check(&res(r#"{"pids":{"limit":-1}}"#)).unwrap();
    }
}
