//! Any bytes through the topology parser and validation: no panic, and a
//! refusal always names a field and says something about it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use veth_userspace::model::{with_mode, Mode, Topology};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Topology::from_toml(text) {
        Ok(_) => {
            for mode in Mode::ALL {
                if let Err(e) = with_mode(text, mode) {
                    assert!(!e.field.is_empty() && !e.message.is_empty(), "{e:?}");
                }
            }
        }
        Err(e) => assert!(!e.field.is_empty() && !e.message.is_empty(), "{e:?}"),
    }
});
