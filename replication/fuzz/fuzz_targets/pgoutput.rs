#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let buf = Bytes::copy_from_slice(data);
    let _ = replication::pgoutput::decode(buf.clone());
    let _ = replication::copy_data::parse(buf);
});
