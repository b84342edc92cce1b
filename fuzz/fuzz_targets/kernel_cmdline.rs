#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| minos_fuzz_targets::kernel_cmdline(data));
