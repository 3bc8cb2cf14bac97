//! Subcommands that run without the server.

pub(crate) mod token;
