//! Takes init's DAX padding out of its file for an initrd.
//!
//! init's code segment ends with `.text.dax_pad`, int3 filler up to a 2 MiB
//! boundary (init/build.rs), so that a DAX root maps the whole segment with
//! one 2 MiB page. On an initrd that buys nothing and costs RAM: the kernel
//! unpacks every byte into tmpfs (about 0.8 MiB for init). [`unpad`] cuts
//! the filler's whole pages out of the file without relinking: every
//! virtual address stays where it was (code reaches data by fixed
//! offsets), only file offsets after the cut move down by a multiple of the
//! page size, which keeps each segment's offset congruent to its address as
//! the ELF loader requires. The code segment ends where the filler's first
//! whole page began; the addresses of the cut pages are simply not mapped
//! (nothing jumps there: the filler is never executed).
//!
//! Checked, never assumed: an ELF64 little-endian file, the filler is the
//! last thing in its segment, and no other section or segment has file
//! bytes in the cut; anything else is an error naming what did not fit.

use crate::util::Result;

const PAGE: u64 = 4096;
const PT_LOAD: u32 = 1;
const SHT_NOBITS: u32 = 8;
const PAD_SECTION: &[u8] = b".text.dax_pad";

/// A little-endian field of `len` bytes at `at`.
fn get(elf: &[u8], at: u64, len: usize) -> Result<u64> {
    let at = usize::try_from(at).map_err(|_| format!("offset {at} out of range"))?;
    let bytes = elf
        .get(at..at.saturating_add(len))
        .ok_or_else(|| format!("the file ends before byte {}", at + len))?;
    let mut v = 0u64;
    for (i, b) in bytes.iter().enumerate() {
        v |= u64::from(*b) << (8 * i);
    }
    Ok(v)
}

fn put(elf: &mut [u8], at: u64, len: usize, value: u64) {
    // Only called on fields `get` has read, so the range exists.
    if let Some(bytes) = usize::try_from(at)
        .ok()
        .and_then(|at| elf.get_mut(at..at + len))
    {
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (value >> (8 * i)) as u8;
        }
    }
}

struct Header {
    /// Where this header's fields start in the file.
    at: u64,
}

impl Header {
    /// Program header fields (ELF64): type, offset, file size, memory size.
    fn phdr(&self, elf: &[u8]) -> Result<(u32, u64, u64, u64)> {
        Ok((
            get(elf, self.at, 4)? as u32,
            get(elf, self.at + 8, 8)?,
            get(elf, self.at + 32, 8)?,
            get(elf, self.at + 40, 8)?,
        ))
    }

    /// Section header fields (ELF64): name index, type, offset, size.
    fn shdr(&self, elf: &[u8]) -> Result<(u64, u32, u64, u64)> {
        Ok((
            get(elf, self.at, 4)?,
            get(elf, self.at + 4, 4)? as u32,
            get(elf, self.at + 24, 8)?,
            get(elf, self.at + 32, 8)?,
        ))
    }
}

/// `elf` without the whole pages of its `.text.dax_pad` section, or `None`
/// when it has no such section (nothing to cut).
pub fn unpad(elf: &[u8]) -> Result<Option<Vec<u8>>> {
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let phoff = get(elf, 32, 8)?;
    let shoff = get(elf, 40, 8)?;
    let phentsize = get(elf, 54, 2)?;
    let phnum = get(elf, 56, 2)?;
    let shentsize = get(elf, 58, 2)?;
    let shnum = get(elf, 60, 2)?;
    let shstrndx = get(elf, 62, 2)?;
    if phentsize != 56 || (shnum > 0 && shentsize != 64) {
        return Err(format!(
            "unexpected header sizes: program {phentsize}, section {shentsize}"
        ));
    }
    let phdrs: Vec<Header> = (0..phnum)
        .map(|i| Header {
            at: phoff + i * phentsize,
        })
        .collect();
    let shdrs: Vec<Header> = (0..shnum)
        .map(|i| Header {
            at: shoff + i * shentsize,
        })
        .collect();
    let strtab = shdrs
        .get(usize::try_from(shstrndx).unwrap_or(usize::MAX))
        .ok_or("no section name table")?
        .shdr(elf)?
        .2;
    let mut pad = None;
    for (i, s) in shdrs.iter().enumerate() {
        let (name, kind, offset, size) = s.shdr(elf)?;
        let start = usize::try_from(strtab + name).unwrap_or(usize::MAX);
        let is_pad = elf.get(start..).is_some_and(|rest| {
            rest.starts_with(PAD_SECTION) && rest.get(PAD_SECTION.len()) == Some(&0)
        });
        if is_pad && kind != SHT_NOBITS {
            pad = Some((i, offset, size));
        }
    }
    let Some((pad_index, pad_offset, pad_size)) = pad else {
        return Ok(None);
    };
    let pad_end = pad_offset + pad_size;
    let cut_start = pad_offset.next_multiple_of(PAGE);
    let cut_end = pad_end / PAGE * PAGE;
    if cut_end <= cut_start {
        return Ok(None);
    }
    let cut = cut_end - cut_start;
    let overlaps = |offset: u64, size: u64| offset < cut_end && offset + size > cut_start;

    // The segment that holds the filler must end with it; no other may
    // have file bytes in the cut.
    let mut holder = None;
    for (i, p) in phdrs.iter().enumerate() {
        let (kind, offset, filesz, memsz) = p.phdr(elf)?;
        if !overlaps(offset, filesz) {
            continue;
        }
        if kind != PT_LOAD || offset > pad_offset || offset + filesz != pad_end || memsz != filesz {
            return Err(format!(
                "program header {i} (type {kind}, file bytes {offset:#x}..{:#x}) does not end with {} at {pad_end:#x}",
                offset + filesz,
                String::from_utf8_lossy(PAD_SECTION)
            ));
        }
        if holder.replace(i).is_some() {
            return Err("two loadable segments hold the padding".into());
        }
    }
    let holder = holder.ok_or("no loadable segment holds the padding")?;
    for (i, s) in shdrs.iter().enumerate() {
        let (_, kind, offset, size) = s.shdr(elf)?;
        if i != pad_index && kind != SHT_NOBITS && overlaps(offset, size) {
            return Err(format!(
                "section {i} has file bytes {offset:#x}..{:#x} inside the padding",
                offset + size
            ));
        }
    }

    let mut out = elf.to_vec();
    for (i, p) in phdrs.iter().enumerate() {
        let (_, offset, _, _) = p.phdr(elf)?;
        if i == holder {
            let size = cut_start - offset;
            put(&mut out, p.at + 32, 8, size);
            put(&mut out, p.at + 40, 8, size);
        } else if offset >= cut_end {
            put(&mut out, p.at + 8, 8, offset - cut);
        }
    }
    for (i, s) in shdrs.iter().enumerate() {
        let (_, _, offset, _) = s.shdr(elf)?;
        if i == pad_index {
            // What is left of the filler (up to the page end) stays in the
            // file; the section itself no longer has file bytes.
            put(&mut out, s.at + 4, 4, u64::from(SHT_NOBITS));
            put(&mut out, s.at + 24, 8, cut_start);
        } else if offset >= cut_end {
            put(&mut out, s.at + 24, 8, offset - cut);
        }
    }
    if shoff >= cut_end {
        put(&mut out, 40, 8, shoff - cut);
    } else if shoff + shnum * shentsize > cut_start && shnum > 0 {
        return Err("the section header table lies in the padding".into());
    }
    let (start, end) = (
        usize::try_from(cut_start).map_err(|_| "cut out of range")?,
        usize::try_from(cut_end).map_err(|_| "cut out of range")?,
    );
    out.drain(start..end);
    Ok(Some(out))
}

/// What the dynamic loader needs to run a program: its interpreter
/// (`PT_INTERP`), the libraries it names (`DT_NEEDED`, in order) and its
/// library search path (`DT_RUNPATH`, else `DT_RPATH`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dynamic {
    pub interp: Option<String>,
    pub needed: Vec<String>,
    pub runpath: Vec<String>,
}

const PT_INTERP: u32 = 3;
const PT_DYNAMIC: u32 = 2;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

/// A NUL-terminated string at file offset `at`.
fn cstr(elf: &[u8], at: u64) -> Result<String> {
    let start = usize::try_from(at).map_err(|_| format!("offset {at} out of range"))?;
    let rest = elf
        .get(start..)
        .ok_or_else(|| format!("string at byte {at} is past the end of the file"))?;
    let len = rest
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| format!("string at byte {at} has no terminating NUL"))?;
    String::from_utf8(rest[..len].to_vec()).map_err(|_| format!("string at byte {at} is not UTF-8"))
}

/// Reads the dynamic-linking needs of a 64-bit little-endian ELF file
/// (a static binary has none: `Dynamic::default()`).
pub fn dynamic(elf: &[u8]) -> Result<Dynamic> {
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let phoff = get(elf, 32, 8)?;
    let phentsize = get(elf, 54, 2)?;
    let phnum = get(elf, 56, 2)?;
    if phentsize != 56 {
        return Err(format!("unexpected program header size {phentsize}"));
    }
    let mut out = Dynamic::default();
    // (vaddr, offset, filesz) of each PT_LOAD, to turn DT_STRTAB's address
    // into a file offset.
    let mut loads = Vec::new();
    let mut dynamic = None;
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let (kind, offset, filesz, _) = Header { at }.phdr(elf)?;
        match kind {
            PT_INTERP => out.interp = Some(cstr(elf, offset)?),
            PT_DYNAMIC => dynamic = Some((offset, filesz)),
            PT_LOAD => loads.push((get(elf, at + 16, 8)?, offset, filesz)),
            _ => {}
        }
    }
    let Some((dyn_offset, dyn_size)) = dynamic else {
        return Ok(out);
    };
    let mut entries = Vec::new();
    for n in 0..dyn_size / 16 {
        let tag = get(elf, dyn_offset + n * 16, 8)?;
        if tag == DT_NULL {
            break;
        }
        entries.push((tag, get(elf, dyn_offset + n * 16 + 8, 8)?));
    }
    let strtab_addr = entries
        .iter()
        .find(|(t, _)| *t == DT_STRTAB)
        .map(|(_, v)| *v)
        .ok_or("PT_DYNAMIC without DT_STRTAB")?;
    let strtab = loads
        .iter()
        .find(|(vaddr, _, filesz)| (*vaddr..vaddr + filesz).contains(&strtab_addr))
        .map(|(vaddr, offset, _)| strtab_addr - vaddr + offset)
        .ok_or_else(|| format!("DT_STRTAB {strtab_addr:#x} is in no PT_LOAD segment"))?;
    let (mut runpath, mut rpath) = (None, None);
    for (tag, value) in entries {
        match tag {
            DT_NEEDED => out.needed.push(cstr(elf, strtab + value)?),
            DT_RUNPATH => runpath = Some(cstr(elf, strtab + value)?),
            DT_RPATH => rpath = Some(cstr(elf, strtab + value)?),
            _ => {}
        }
    }
    out.runpath = runpath
        .or(rpath)
        .map(|p| {
            p.split(':')
                .filter(|d| !d.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A static-pie C program linked as init is (rustc's LLD, the padding
    /// last in the code segment after glibc's other code): the program runs
    /// the same after the cut, the file is the padding's whole pages
    /// shorter, and readelf finds nothing to warn about.
    #[test]
    fn a_cut_static_pie_runs_as_before_and_readelf_agrees() {
        let dir = std::env::temp_dir().join(format!("minos-unpad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("p.c"),
            "#include <stdio.h>\n#include <string.h>\nstatic char data[64] = \"data\";\n\
             int main(int c, char **v) { char b[64]; memcpy(b, data, sizeof b); \
             printf(\"%s %s %d\\n\", b, v[0] ? \"argv\" : \"-\", c); return 0; }\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("pad.ld"),
            "SECTIONS\n{\n  .init : { KEEP(*(.init)) }\n  .fini : { KEEP(*(.fini)) }\n  \
             __libc_freeres_fn : { *(__libc_freeres_fn) }\n  .iplt : { *(.iplt) }\n}\n\
             INSERT AFTER .text;\n\
             SECTIONS\n{\n  .text.dax_pad : { BYTE(0xCC) . = ALIGN(0x200000); } =0xCCCCCCCC\n}\n\
             INSERT AFTER .iplt;\n",
        )
        .unwrap();
        // The linker rustc links init with: its own LLD.
        let sysroot = Command::new("rustc")
            .args(["--print", "sysroot"])
            .output()
            .unwrap();
        let gcc_ld = format!(
            "-B{}/lib/rustlib/x86_64-unknown-linux-gnu/bin/gcc-ld",
            String::from_utf8_lossy(&sysroot.stdout).trim()
        );
        let out = Command::new("cc")
            .current_dir(&dir)
            .args([
                "-static-pie",
                "-O1",
                "-fuse-ld=lld",
                &gcc_ld,
                "-o",
                "padded",
                "p.c",
            ])
            .arg("-Wl,--no-rosegment,-T,pad.ld")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let padded = std::fs::read(dir.join("padded")).unwrap();
        let run = |name: &str| {
            let o = Command::new(dir.join(name)).output().unwrap();
            assert!(o.status.success(), "{name}: {o:?}");
            String::from_utf8(o.stdout).unwrap()
        };
        assert_eq!(run("padded"), format!("data argv 1\n"));

        let cut = unpad(&padded).unwrap().expect("a padding to cut");
        assert!(
            padded.len() - cut.len() >= 1 << 20,
            "{} -> {}",
            padded.len(),
            cut.len()
        );
        assert_eq!((padded.len() - cut.len()) % 4096, 0);
        let path = dir.join("cut");
        std::fs::write(&path, &cut).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        assert_eq!(run("cut"), "data argv 1\n");
        let o = Command::new("readelf")
            .args(["-a", "-W"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success() && stderr.is_empty(), "{stderr}");
        // Nothing left to cut; a file without the section is left alone.
        assert_eq!(unpad(&cut).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_installed_init_is_cut_or_left_alone_never_broken() {
        // Any ELF without the section (this test binary) is left as it is.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(unpad(&me).unwrap(), None);
    }

    #[test]
    fn anything_else_is_an_error_not_a_panic() {
        assert!(unpad(b"").is_err());
        assert!(unpad(b"#!/bin/sh\n").unwrap_err().contains("not a 64-bit"));
        let mut header = b"\x7fELF\x02\x01\x01".to_vec();
        header.resize(40, 0);
        assert!(unpad(&header).unwrap_err().contains("ends before byte"));
    }
}
