//! Choosing the TCP port, remembering it in `root/port`, and noticing when
//! it was taken by someone else at start.

use crate::error::io_err;
use crate::{Cluster, Error};
use std::collections::HashSet;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

impl Cluster {
    pub(crate) fn remembered_port(&self) -> Option<u16> {
        fs::read_to_string(self.root.join("port"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub(crate) fn write_port_file(&self) -> Result<(), Error> {
        let path = self.root.join("port");
        fs::write(&path, format!("{}\n", self.port)).map_err(io_err("writing", &path))
    }

    /// Whether postgres.log, from `offset` on, says the port was taken.
    pub(crate) fn port_taken_since(&self, offset: u64) -> bool {
        let Ok(mut file) = fs::File::open(&self.log_file) else {
            return false;
        };
        let mut text = String::new();
        let _ = file.seek(SeekFrom::Start(offset));
        let _ = file.take(1 << 20).read_to_string(&mut text);
        text.contains("Address already in use")
    }
}

/// A port on 127.0.0.1 that is free now and was not handed out before by
/// this process.
pub(crate) fn pick_free_port() -> Result<u16, Error> {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..100 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|source| Error::Io {
                context: "binding 127.0.0.1:0 to find a free port".to_owned(),
                source,
            })?
            .port();
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if handed_out.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    Err(Error::Setup(
        "could not find a free TCP port on 127.0.0.1".to_owned(),
    ))
}
