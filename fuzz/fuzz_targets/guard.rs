#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| milkglass_fuzz::guard(data));
