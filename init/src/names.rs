//! Unit names looked up by index: a small open-addressing hash table.
//!
//! The one name → index map of unit loading and supervision. A `BTreeMap`
//! per key and value type, or a sorted vector, would do the same, but each
//! instantiation of a B-tree or of a sort costs init several KiB of code
//! against its 1.5 MiB budget (docs/SPECIFICATION.md); this is a few
//! hundred bytes. Sets of names are `BTreeSet<String>`, which init has
//! anyway. Unit names come from the image (trusted), so a plain FNV-1a
//! hash is enough.

/// Names and the index each stands for; the first index for a name given
/// twice.
#[derive(Debug, Default, Clone)]
pub struct NameIndex {
    names: Vec<String>,
    /// Indexes into `names`, `u32::MAX` for an empty slot; a power of two
    /// at least twice the names.
    slots: Vec<u32>,
}

const EMPTY: u32 = u32::MAX;

fn hash(name: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as usize
}

impl NameIndex {
    /// Indexes `names` by their position.
    pub fn new<'a>(names: impl Iterator<Item = &'a str>) -> NameIndex {
        let names: Vec<String> = names.map(str::to_owned).collect();
        let size = (names.len() * 2).max(8).next_power_of_two();
        let mut slots = vec![EMPTY; size];
        for (i, name) in names.iter().enumerate() {
            let Ok(index) = u32::try_from(i) else { break };
            let mut at = hash(name) & (size - 1);
            loop {
                match slots.get(at).copied() {
                    Some(EMPTY) => {
                        if let Some(slot) = slots.get_mut(at) {
                            *slot = index;
                        }
                        break;
                    }
                    // The first index of a name given twice stays.
                    Some(j) if names.get(j as usize) == Some(name) => break,
                    Some(_) => at = (at + 1) & (size - 1),
                    None => break,
                }
            }
        }
        NameIndex { names, slots }
    }

    pub fn get(&self, name: &str) -> Option<usize> {
        let size = self.slots.len();
        if size == 0 {
            return None;
        }
        let mut at = hash(name) & (size - 1);
        loop {
            match self.slots.get(at).copied() {
                None | Some(EMPTY) => return None,
                Some(j) if self.names.get(j as usize).is_some_and(|n| n == name) => {
                    return Some(j as usize)
                }
                Some(_) => at = (at + 1) & (size - 1),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_find_their_first_index() {
        let idx = NameIndex::new(["b", "a", "c", "a"].into_iter());
        assert_eq!(idx.get("a"), Some(1));
        assert_eq!(idx.get("b"), Some(0));
        assert_eq!(idx.get("c"), Some(2));
        assert_eq!(idx.get("d"), None);
        assert_eq!(idx.get(""), None);
        assert_eq!(NameIndex::default().get("a"), None);
        assert_eq!(NameIndex::new(std::iter::empty()).get("a"), None);
    }

    #[test]
    fn many_names_each_found_at_its_place() {
        let names: Vec<String> = (0..5000).map(|i| format!("u-{i:06}.service")).collect();
        let idx = NameIndex::new(names.iter().map(String::as_str));
        for (i, n) in names.iter().enumerate() {
            assert_eq!(idx.get(n), Some(i));
        }
        assert_eq!(idx.get("u-005000.service"), None);
    }
}
