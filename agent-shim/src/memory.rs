//! Memory in use when the shim is ready, for the boot benchmark's memory
//! budget.
//!
//! `used = MemTotal - MemFree - pages on per-CPU lists`. Pages freed by a CPU
//! first go to that CPU's free list (the pageset, `pcp`) and are not counted
//! in MemFree (NR_FREE_PAGES) until they are returned to the buddy allocator
//! in a batch; how many sit there at a given moment varies from boot to boot.
//! Counting them as free makes the figure steady between identical boots,
//! where MemAvailable moves by up to 7 MiB.
//!
//! The parsers are pure and take the texts of `/proc/meminfo` and
//! `/proc/zoneinfo`; [`read_mem_used_kib`] takes the procfs root so tests
//! can use a fixture tree.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum MemError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("meminfo has no `{0}:` line")]
    MissingField(&'static str),
    #[error("{file} line `{line}` is malformed")]
    Malformed { file: &'static str, line: String },
    #[error("zoneinfo lists no per-CPU page counts")]
    NoPagesets,
    #[error(
        "MemFree ({free_kib} kB) plus per-CPU lists ({pcp_kib} kB) exceed MemTotal ({total_kib} kB)"
    )]
    Inconsistent {
        total_kib: u64,
        free_kib: u64,
        pcp_kib: u64,
    },
}

/// The two `/proc/meminfo` values the used figure needs, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    pub total_kib: u64,
    pub free_kib: u64,
}

/// Reads `MemTotal:` and `MemFree:` (`Name:   N kB`) from `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> Result<MemInfo, MemError> {
    let field = |name: &'static str| {
        let line = text
            .lines()
            .find(|line| line.split_once(':').is_some_and(|(key, _)| key == name))
            .ok_or(MemError::MissingField(name))?;
        let malformed = || MemError::Malformed {
            file: "meminfo",
            line: line.to_owned(),
        };
        let value = line.split_once(':').map_or("", |(_, value)| value);
        match value.split_whitespace().collect::<Vec<_>>()[..] {
            [number, "kB"] => number.parse::<u64>().map_err(|_| malformed()),
            _ => Err(malformed()),
        }
    };
    Ok(MemInfo {
        total_kib: field("MemTotal")?,
        free_kib: field("MemFree")?,
    })
}

/// Sums the pages on per-CPU free lists from `/proc/zoneinfo`: every
/// `count:` line that follows a zone's `pagesets` line, before the next
/// `Node N, zone NAME` header. Zones without memory have no pagesets.
pub fn parse_pcp_pages(text: &str) -> Result<u64, MemError> {
    let mut in_pagesets = false;
    let mut seen = false;
    let mut pages: u64 = 0;
    for line in text.lines() {
        if line.starts_with("Node ") {
            in_pagesets = false;
            continue;
        }
        let trimmed = line.trim();
        if trimmed == "pagesets" {
            in_pagesets = true;
            continue;
        }
        let Some(count) = trimmed.strip_prefix("count:").filter(|_| in_pagesets) else {
            continue;
        };
        let malformed = || MemError::Malformed {
            file: "zoneinfo",
            line: trimmed.to_owned(),
        };
        let count: u64 = count.trim().parse().map_err(|_| malformed())?;
        pages = pages.checked_add(count).ok_or_else(malformed)?;
        seen = true;
    }
    if seen {
        Ok(pages)
    } else {
        Err(MemError::NoPagesets)
    }
}

/// `MemTotal - MemFree - per-CPU list pages × page size`, in KiB.
pub fn mem_used_kib(meminfo: &str, zoneinfo: &str, page_kib: u64) -> Result<u64, MemError> {
    let MemInfo {
        total_kib,
        free_kib,
    } = parse_meminfo(meminfo)?;
    let pcp_pages = parse_pcp_pages(zoneinfo)?;
    let pcp_kib = pcp_pages.saturating_mul(page_kib);
    total_kib
        .checked_sub(free_kib)
        .and_then(|used| used.checked_sub(pcp_kib))
        .ok_or(MemError::Inconsistent {
            total_kib,
            free_kib,
            pcp_kib,
        })
}

/// Reads `meminfo` and `zoneinfo` under `proc` (normally `/proc`) and
/// computes [`mem_used_kib`] with the system's page size.
pub fn read_mem_used_kib(proc: &Path) -> Result<u64, MemError> {
    let read = |name: &str| {
        let path = proc.join(name);
        std::fs::read_to_string(&path).map_err(|source| MemError::Read { path, source })
    };
    let meminfo = read("meminfo")?;
    let zoneinfo = read("zoneinfo")?;
    // A page is at least 4 KiB on every Linux target; usize always fits u64.
    let page_kib = u64::try_from(rustix::param::page_size() / 1024).unwrap_or(4);
    mem_used_kib(&meminfo, &zoneinfo, page_kib)
}

/// The marker line: `agent-shim: mem_used_kib=N`, or `=unknown` when it
/// could not be computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemLine(pub Option<u64>);

impl fmt::Display for MemLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("agent-shim: mem_used_kib=")?;
        match self.0 {
            Some(kib) => write!(f, "{kib}"),
            None => f.write_str("unknown"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head of /proc/meminfo of a 512 MiB, 2-CPU QEMU guest (6.x kernel).
    const MEMINFO: &str = "\
MemTotal:         492036 kB
MemFree:          441872 kB
MemAvailable:     447388 kB
Buffers:               0 kB
Cached:             9340 kB
SwapCached:            0 kB
Active:             2416 kB
Inactive:           8148 kB
";

    /// /proc/zoneinfo of the same guest: DMA and DMA32 with pagesets for
    /// CPUs 0 and 1, then the empty Normal and Movable zones. Per-CPU
    /// counts: 0 + 0 + 62 + 126 = 188 pages.
    const ZONEINFO: &str = "\
Node 0, zone      DMA
  per-node stats
      nr_inactive_anon 12
      nr_active_anon 0
      nr_inactive_file 2025
      nr_active_file 0
      nr_unevictable 0
      nr_slab_reclaimable 617
      nr_slab_unreclaimable 1705
      nr_anon_pages 10
      nr_mapped    1182
      nr_file_pages 2335
      nr_kernel_stack 784
      nr_page_table_pages 49
  pages free     3958
        boost    0
        min      81
        low      101
        high     121
        promo    141
        spanned  4095
        present  3998
        managed  3976
        cma      0
        protection: (0, 411, 411, 411, 411)
      nr_free_pages 3958
      nr_free_pages_blocks 3584
      nr_zone_inactive_anon 0
      nr_zone_active_anon 0
      nr_zone_inactive_file 0
      nr_zone_active_file 0
      nr_zone_unevictable 0
      nr_zone_write_pending 0
      nr_mlock     0
      nr_zspages   0
      nr_free_cma  0
  pagesets
    cpu: 0
              count:    0
              high:     0
              batch:    1
              high_min: 0
              high_max: 0
  vm stats threshold: 4
    cpu: 1
              count:    0
              high:     0
              batch:    1
              high_min: 0
              high_max: 0
  vm stats threshold: 4
  node_unreclaimable:  0
  start_pfn:           1
Node 0, zone    DMA32
  pages free     106510
        boost    0
        min      2154
        low      2692
        high     3230
        promo    3768
        spanned  126942
        present  126942
        managed  119033
        cma      0
        protection: (0, 0, 0, 0, 0)
      nr_free_pages 106510
      nr_free_pages_blocks 99328
      nr_zone_inactive_anon 12
      nr_zone_active_anon 0
      nr_zone_inactive_file 2025
      nr_zone_active_file 0
      nr_zone_unevictable 0
      nr_zone_write_pending 0
      nr_mlock     0
      nr_zspages   0
      nr_free_cma  0
  pagesets
    cpu: 0
              count:    62
              high:     511
              batch:    63
              high_min: 511
              high_max: 7439
  vm stats threshold: 12
    cpu: 1
              count:    126
              high:     511
              batch:    63
              high_min: 511
              high_max: 7439
  vm stats threshold: 12
  node_unreclaimable:  0
  start_pfn:           4096
Node 0, zone   Normal
  pages free     0
        boost    0
        min      0
        low      0
        high     0
        promo    0
        spanned  0
        present  0
        managed  0
        cma      0
        protection: (0, 0, 0, 0, 0)
Node 0, zone  Movable
  pages free     0
        boost    0
        min      0
        low      0
        high     0
        promo    0
        spanned  0
        present  0
        managed  0
        cma      0
        protection: (0, 0, 0, 0, 0)
";

    #[test]
    fn meminfo_total_and_free() {
        assert_eq!(
            parse_meminfo(MEMINFO).unwrap(),
            MemInfo {
                total_kib: 492_036,
                free_kib: 441_872
            }
        );
    }

    #[test]
    fn pcp_pages_are_summed_over_zones_and_cpus() {
        assert_eq!(parse_pcp_pages(ZONEINFO).unwrap(), 188);
    }

    #[test]
    fn used_subtracts_free_and_pcp_pages() {
        // 492036 - 441872 - 188 * 4
        assert_eq!(mem_used_kib(MEMINFO, ZONEINFO, 4).unwrap(), 49_412);
        // 64 KiB pages (arm64, ppc64le).
        assert_eq!(
            mem_used_kib(MEMINFO, ZONEINFO, 64).unwrap(),
            492_036 - 441_872 - 188 * 64
        );
    }

    #[test]
    fn counts_outside_pagesets_are_not_summed() {
        // A `count:` line before any pagesets line, and one in a zone after
        // the one that had pagesets, do not belong to a pageset.
        let text = "\
Node 0, zone      DMA
  count: 1000
  pagesets
    cpu: 0
              count:    7
Node 0, zone    DMA32
  pages free     10
              count:    2000
";
        assert_eq!(parse_pcp_pages(text).unwrap(), 7);
    }

    #[test]
    fn missing_meminfo_fields() {
        let err = parse_meminfo("MemFree: 1 kB\n").unwrap_err();
        assert_eq!(err.to_string(), "meminfo has no `MemTotal:` line");
        let err = parse_meminfo("MemTotal: 2 kB\nMemAvailable: 1 kB\n").unwrap_err();
        assert_eq!(err.to_string(), "meminfo has no `MemFree:` line");
        assert!(parse_meminfo("").is_err());
    }

    #[test]
    fn malformed_meminfo_lines_are_quoted() {
        for line in [
            "MemTotal:  lots kB",
            "MemTotal:  492036",
            "MemTotal:  492036 MB",
            "MemTotal:  -1 kB",
            "MemTotal:",
        ] {
            let text = format!("{line}\nMemFree: 1 kB\n");
            let err = parse_meminfo(&text).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("meminfo line `{line}` is malformed")
            );
        }
    }

    #[test]
    fn malformed_zoneinfo() {
        let err =
            parse_pcp_pages("Node 0, zone DMA\n  pagesets\n    cpu: 0\n  count: x\n").unwrap_err();
        assert_eq!(err.to_string(), "zoneinfo line `count: x` is malformed");
        let overflow = format!("  pagesets\n  count: {}\n  count: 1\n", u64::MAX);
        assert!(matches!(
            parse_pcp_pages(&overflow),
            Err(MemError::Malformed { .. })
        ));
        assert!(matches!(parse_pcp_pages(""), Err(MemError::NoPagesets)));
        assert!(matches!(
            parse_pcp_pages(MEMINFO),
            Err(MemError::NoPagesets)
        ));
    }

    #[test]
    fn more_free_than_total_is_inconsistent() {
        let meminfo = "MemTotal: 1000 kB\nMemFree: 990 kB\n";
        assert_eq!(
            mem_used_kib(meminfo, ZONEINFO, 4).unwrap_err().to_string(),
            "MemFree (990 kB) plus per-CPU lists (752 kB) exceed MemTotal (1000 kB)"
        );
    }

    #[test]
    fn marker_line() {
        assert_eq!(
            MemLine(Some(49_412)).to_string(),
            "agent-shim: mem_used_kib=49412"
        );
        assert_eq!(
            MemLine(None).to_string(),
            "agent-shim: mem_used_kib=unknown"
        );
    }

    /// A fake procfs root holding the given files.
    struct Fixture(PathBuf);

    impl Fixture {
        fn new(files: &[(&str, &str)]) -> Self {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "agent-shim-memory-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            for (name, content) in files {
                std::fs::write(dir.join(name), content).unwrap();
            }
            Self(dir)
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            // Best effort: a leftover temp dir must not fail a test.
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn reads_a_fixture_tree() {
        let fixture = Fixture::new(&[("meminfo", MEMINFO), ("zoneinfo", ZONEINFO)]);
        let page_kib = u64::try_from(rustix::param::page_size() / 1024).unwrap();
        assert_eq!(
            read_mem_used_kib(&fixture.0).unwrap(),
            492_036 - 441_872 - 188 * page_kib
        );
    }

    #[test]
    fn missing_file_is_named() {
        let fixture = Fixture::new(&[("meminfo", MEMINFO)]);
        let err = read_mem_used_kib(&fixture.0).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot read {}", fixture.0.join("zoneinfo").display())
        );
    }

    #[test]
    fn reads_real_proc() {
        let used = read_mem_used_kib(Path::new("/proc")).unwrap();
        let total = parse_meminfo(&std::fs::read_to_string("/proc/meminfo").unwrap())
            .unwrap()
            .total_kib;
        assert!(used > 0 && used < total, "used {used} of {total} KiB");
    }
}
