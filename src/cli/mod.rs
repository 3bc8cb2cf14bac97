//! Client-side subcommands: they talk to a running server or need no server at all.

pub(crate) mod listen;
pub(crate) mod token;
