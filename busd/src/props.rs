//! Unit properties as they arrive over D-Bus (`a(sv)`) → typed settings,
//! and systemd's value conversions. Pure.

use zbus::zvariant::Value;

/// One resource setting of `StartTransientUnit` or `SetUnitProperties`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    /// `CPUWeight` (1..=10000).
    CpuWeight(u64),
    /// `CPUShares` (2..=262144), cgroup v1's unit.
    CpuShares(u64),
    /// `CPUQuotaPerSecUSec`; `u64::MAX` is no quota.
    CpuQuotaPerSec(u64),
    /// `CPUQuotaPeriodUSec`; `u64::MAX` is the default (100 ms).
    CpuQuotaPeriod(u64),
    /// `MemoryMax` (also `MemoryLimit`, which systemd maps to the same
    /// limit); `u64::MAX` is no limit.
    MemoryMax(u64),
    MemoryHigh(u64),
    MemoryLow(u64),
    MemoryMin(u64),
    MemorySwapMax(u64),
    /// `TasksMax`; `u64::MAX` is no limit.
    TasksMax(u64),
    /// `AllowedCPUs` as a kernel list (`0-3,5`).
    AllowedCpus(String),
    /// `AllowedMemoryNodes` as a kernel list.
    AllowedMemoryNodes(String),
}

/// Everything `StartTransientUnit` may carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transient {
    pub pids: Vec<u32>,
    pub slice: Option<String>,
    pub description: Option<String>,
    pub delegate: bool,
    pub settings: Vec<Setting>,
}

/// A refused property; the text names it and says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropError(pub String);

impl std::fmt::Display for PropError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PropError {}

fn u64_of(name: &str, v: &Value<'_>) -> Result<u64, PropError> {
    match v {
        Value::U64(n) => Ok(*n),
        other => Err(wrong_type(name, "t", other)),
    }
}

fn bool_of(name: &str, v: &Value<'_>) -> Result<bool, PropError> {
    match v {
        Value::Bool(b) => Ok(*b),
        other => Err(wrong_type(name, "b", other)),
    }
}

fn str_of(name: &str, v: &Value<'_>) -> Result<String, PropError> {
    match v {
        Value::Str(s) => Ok(s.as_str().to_string()),
        other => Err(wrong_type(name, "s", other)),
    }
}

fn wrong_type(name: &str, want: &str, got: &Value<'_>) -> PropError {
    PropError(format!(
        "property {name} wants type '{want}', got '{}'",
        got.value_signature()
    ))
}

fn array_of<'v>(name: &str, want: &str, v: &'v Value<'_>) -> Result<&'v [Value<'v>], PropError> {
    match v {
        Value::Array(a) if a.element_signature().to_string() == want[1..] => Ok(a.inner()),
        other => Err(wrong_type(name, want, other)),
    }
}

fn bytes_of(name: &str, v: &Value<'_>) -> Result<Vec<u8>, PropError> {
    array_of(name, "ay", v)?
        .iter()
        .map(|b| match b {
            Value::U8(b) => Ok(*b),
            other => Err(wrong_type(name, "ay", other)),
        })
        .collect()
}

/// A resource setting (`SetUnitProperties` accepts these only).
/// `Ok(None)`: a known property that needs no action here (accounting
/// switches: busd enables every available controller anyway).
pub fn setting(name: &str, v: &Value<'_>) -> Result<Option<Setting>, PropError> {
    let s = match name {
        "CPUWeight" => {
            let w = u64_of(name, v)?;
            if w != u64::MAX && !(1..=10_000).contains(&w) {
                return Err(PropError(format!(
                    "property CPUWeight={w} out of range 1..10000"
                )));
            }
            Setting::CpuWeight(if w == u64::MAX { 100 } else { w })
        }
        "CPUShares" => {
            let s = u64_of(name, v)?;
            if s != u64::MAX && !(2..=262_144).contains(&s) {
                return Err(PropError(format!(
                    "property CPUShares={s} out of range 2..262144"
                )));
            }
            Setting::CpuShares(if s == u64::MAX { 1024 } else { s })
        }
        "CPUQuotaPerSecUSec" => {
            let q = u64_of(name, v)?;
            if q == 0 {
                return Err(PropError(
                    "property CPUQuotaPerSecUSec=0: a quota must be positive".into(),
                ));
            }
            Setting::CpuQuotaPerSec(q)
        }
        "CPUQuotaPeriodUSec" => Setting::CpuQuotaPeriod(u64_of(name, v)?),
        "MemoryMax" | "MemoryLimit" => Setting::MemoryMax(u64_of(name, v)?),
        "MemoryHigh" => Setting::MemoryHigh(u64_of(name, v)?),
        "MemoryLow" => Setting::MemoryLow(u64_of(name, v)?),
        "MemoryMin" => Setting::MemoryMin(u64_of(name, v)?),
        "MemorySwapMax" => Setting::MemorySwapMax(u64_of(name, v)?),
        "TasksMax" => Setting::TasksMax(u64_of(name, v)?),
        "AllowedCPUs" => Setting::AllowedCpus(bitmask_to_list(&bytes_of(name, v)?)),
        "AllowedMemoryNodes" => Setting::AllowedMemoryNodes(bitmask_to_list(&bytes_of(name, v)?)),
        "CPUAccounting" | "MemoryAccounting" | "TasksAccounting" | "IOAccounting"
        | "BlockIOAccounting" => {
            bool_of(name, v)?;
            return Ok(None);
        }
        _ => return Err(PropError(format!("unknown or unsupported property {name}"))),
    };
    Ok(Some(s))
}

/// The properties of `StartTransientUnit`.
pub fn transient(props: &[(String, Value<'_>)]) -> Result<Transient, PropError> {
    let mut t = Transient::default();
    for (name, v) in props {
        match name.as_str() {
            "PIDs" => {
                for p in array_of(name, "au", v)? {
                    match p {
                        Value::U32(0) => {
                            return Err(PropError("property PIDs: 0 is not a process".into()))
                        }
                        Value::U32(p) => t.pids.push(*p),
                        other => return Err(wrong_type(name, "au", other)),
                    }
                }
            }
            "Slice" => t.slice = Some(str_of(name, v)?),
            "Description" => t.description = Some(str_of(name, v)?),
            "Delegate" => t.delegate = bool_of(name, v)?,
            "DefaultDependencies" => {
                bool_of(name, v)?;
            }
            // A slice's ordering dependency; slices here have no jobs to order.
            "Wants" | "After" | "Before" | "Requires" => {
                str_of(name, v)?;
            }
            "CollectMode" => {
                str_of(name, v)?;
            }
            _ => {
                if let Some(s) = setting(name, v)? {
                    t.settings.push(s);
                }
            }
        }
    }
    Ok(t)
}

/// systemd's `cgroup_cpu_shares_to_weight`.
pub fn shares_to_weight(shares: u64) -> u64 {
    (shares.saturating_mul(100) / 1024).clamp(1, 10_000)
}

/// systemd's `cgroup_cpu_weight_to_shares`.
pub fn weight_to_shares(weight: u64) -> u64 {
    (weight.saturating_mul(1024) / 100).clamp(2, 262_144)
}

/// The default CFS period, 100 ms.
pub const DEFAULT_PERIOD_USEC: u64 = 100_000;

/// The quota and period written to `cpu.max` (v1: `cpu.cfs_quota_us`,
/// `cpu.cfs_period_us`) for a quota per second and a period as systemd
/// computes them: the period clamped to 1 ms..1 s, the quota
/// `per_sec × period / 1 s`, at least 1 ms; `None` quota is `max`.
pub fn cpu_quota(per_sec: Option<u64>, period: Option<u64>) -> (Option<u64>, u64) {
    let period = match period {
        None | Some(u64::MAX) => DEFAULT_PERIOD_USEC,
        Some(p) => p.clamp(1_000, 1_000_000),
    };
    let quota = match per_sec {
        None | Some(u64::MAX) => None,
        Some(q) => Some((u128::from(q) * u128::from(period) / 1_000_000).max(1_000) as u64),
    };
    (quota, period)
}

/// A limit as cgroup v2 writes it: `max` for `u64::MAX`.
pub fn v2_limit(v: u64) -> String {
    if v == u64::MAX {
        "max".to_string()
    } else {
        v.to_string()
    }
}

/// systemd's D-Bus CPU set (`cpu_set_to_dbus`): bit `n % 8` of byte `n / 8`
/// is CPU `n` → the kernel's list format.
pub fn bitmask_to_list(mask: &[u8]) -> String {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for (i, byte) in mask.iter().enumerate() {
        for bit in 0..8 {
            if byte & (1 << bit) != 0 {
                let n = i * 8 + bit;
                match ranges.last_mut() {
                    Some((_, end)) if *end + 1 == n => *end = n,
                    _ => ranges.push((n, n)),
                }
            }
        }
    }
    ranges
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::zvariant::Array;

    fn prop(name: &str, v: Value<'static>) -> (String, Value<'static>) {
        (name.to_string(), v)
    }

    #[test]
    fn conversions_match_systemd() {
        assert_eq!(shares_to_weight(1024), 100);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(512), 50);
        assert_eq!(weight_to_shares(100), 1024);
        assert_eq!(weight_to_shares(1), 10);
        assert_eq!(weight_to_shares(10_000), 102_400);
        // 50 ms per second with a 100 ms period: 5 ms of 100.
        assert_eq!(
            cpu_quota(Some(50_000), Some(100_000)),
            (Some(5_000), 100_000)
        );
        // Kata's 2 CPUs: quota 200000 of period 100000 → 2 s per second.
        assert_eq!(
            cpu_quota(Some(2_000_000), Some(100_000)),
            (Some(200_000), 100_000)
        );
        assert_eq!(cpu_quota(Some(1), None), (Some(1_000), 100_000));
        assert_eq!(cpu_quota(Some(u64::MAX), Some(50_000)), (None, 50_000));
        assert_eq!(cpu_quota(None, Some(10)), (None, 1_000));
        assert_eq!(cpu_quota(None, Some(u64::MAX)), (None, 100_000));
        assert_eq!(v2_limit(u64::MAX), "max");
        assert_eq!(v2_limit(4096), "4096");
    }

    #[test]
    fn bitmasks() {
        assert_eq!(bitmask_to_list(&[]), "");
        assert_eq!(bitmask_to_list(&[0b0000_0001]), "0");
        assert_eq!(bitmask_to_list(&[0b0000_1111]), "0-3");
        assert_eq!(bitmask_to_list(&[0b1010_0101]), "0,2,5,7");
        assert_eq!(bitmask_to_list(&[0xff, 0x01]), "0-8");
        assert_eq!(bitmask_to_list(&[0x00, 0x80]), "15");
    }

    #[test]
    fn transient_scope_as_the_agent_sends_it() {
        let props = vec![
            prop("CPUAccounting", Value::Bool(true)),
            prop("DefaultDependencies", Value::Bool(false)),
            prop("MemoryAccounting", Value::Bool(true)),
            prop("TasksAccounting", Value::Bool(true)),
            prop("Description", Value::from("kata-agent container")),
            prop("PIDs", Value::Array(Array::from(vec![42u32]))),
            prop("BlockIOAccounting", Value::Bool(true)),
            prop("Slice", Value::from("system.slice")),
            prop("Delegate", Value::Bool(true)),
            prop("TasksMax", Value::U64(10)),
        ];
        let t = transient(&props).unwrap();
        assert_eq!(t.pids, vec![42]);
        assert_eq!(t.slice.as_deref(), Some("system.slice"));
        assert!(t.delegate);
        assert_eq!(t.description.as_deref(), Some("kata-agent container"));
        assert_eq!(t.settings, vec![Setting::TasksMax(10)]);
    }

    #[test]
    fn refusals_name_the_property() {
        let e = transient(&[prop("Bogus", Value::Bool(true))]).unwrap_err();
        assert!(e.0.contains("Bogus"), "{e}");
        let e = transient(&[prop("PIDs", Value::Array(Array::from(vec!["x"])))]).unwrap_err();
        assert!(e.0.contains("PIDs") && e.0.contains("'au'"), "{e}");
        let e = setting("MemoryMax", &Value::U32(5)).unwrap_err();
        assert_eq!(e.0, "property MemoryMax wants type 't', got 'u'");
        let e = setting("CPUWeight", &Value::U64(0)).unwrap_err();
        assert!(e.0.contains("CPUWeight=0"), "{e}");
        assert!(setting("CPUShares", &Value::U64(1)).is_err());
        assert!(setting("CPUQuotaPerSecUSec", &Value::U64(0)).is_err());
        assert!(setting("Slice", &Value::from("x.slice")).is_err());
    }

    #[test]
    fn settings() {
        assert_eq!(
            setting("MemoryLimit", &Value::U64(1 << 20)).unwrap(),
            Some(Setting::MemoryMax(1 << 20))
        );
        assert_eq!(
            setting("AllowedCPUs", &Value::Array(Array::from(vec![3u8]))).unwrap(),
            Some(Setting::AllowedCpus("0-1".into()))
        );
        assert_eq!(setting("IOAccounting", &Value::Bool(true)).unwrap(), None);
        assert_eq!(
            setting("CPUWeight", &Value::U64(u64::MAX)).unwrap(),
            Some(Setting::CpuWeight(100))
        );
    }
}
