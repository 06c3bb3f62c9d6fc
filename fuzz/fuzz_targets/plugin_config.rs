//! The filter's plugin configuration: refused or accepted, never a panic.
#![no_main]
use keygate_filter::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Config::parse(data);
});
