//! Replication commands: IDENTIFY_SYSTEM, CREATE_REPLICATION_SLOT, DROP_REPLICATION_SLOT and
//! the text of START_REPLICATION, with every identifier quoted.

use crate::conn::Connection;
use crate::{Error, Lsn};

/// The answer to `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    pub system_id: String,
    pub timeline: u32,
    /// Current WAL flush position of the server.
    pub xlog_pos: Lsn,
    pub dbname: Option<String>,
}

/// A slot just created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub name: String,
    /// Streaming from this slot starts with transactions committing after this position.
    pub consistent_point: Lsn,
}

impl Connection {
    pub async fn identify_system(&mut self) -> Result<SystemInfo, Error> {
        let result = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = single_row(result.rows, "IDENTIFY_SYSTEM")?;
        let field = |i: usize| row.get(i).cloned().flatten();
        let timeline = field(1)
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| Error::Protocol("IDENTIFY_SYSTEM: bad timeline".into()))?;
        Ok(SystemInfo {
            system_id: field(0).unwrap_or_default(),
            timeline,
            xlog_pos: parse_lsn(field(2), "IDENTIFY_SYSTEM")?,
            dbname: field(3),
        })
    }

    /// Creates a logical slot for `pgoutput`. Fails with SQLSTATE `42710` if it exists.
    pub async fn create_slot(&mut self, name: &str, temporary: bool) -> Result<SlotInfo, Error> {
        let sql = format!(
            "CREATE_REPLICATION_SLOT {}{} LOGICAL pgoutput NOEXPORT_SNAPSHOT",
            quote_ident(name)?,
            if temporary { " TEMPORARY" } else { "" }
        );
        let row = single_row(
            self.simple_query(&sql).await?.rows,
            "CREATE_REPLICATION_SLOT",
        )?;
        Ok(SlotInfo {
            name: name.to_owned(),
            consistent_point: parse_lsn(row.get(1).cloned().flatten(), "CREATE_REPLICATION_SLOT")?,
        })
    }

    /// Drops a slot; with `wait`, waits for its consumer to go instead of failing.
    pub async fn drop_slot(&mut self, name: &str, wait: bool) -> Result<(), Error> {
        let sql = format!(
            "DROP_REPLICATION_SLOT {}{}",
            quote_ident(name)?,
            if wait { " WAIT" } else { "" }
        );
        self.simple_query(&sql).await.map(drop)
    }
}

/// `START_REPLICATION` for pgoutput protocol version 1 (only committed transactions arrive).
pub(crate) fn start_replication_sql(
    slot: &str,
    from: Lsn,
    publications: &[String],
    messages: bool,
) -> Result<String, Error> {
    if publications.is_empty() {
        return Err(Error::Config("at least one publication is required".into()));
    }
    let names = publications
        .iter()
        .map(|p| quote_ident(p))
        .collect::<Result<Vec<_>, _>>()?
        .join(",");
    Ok(format!(
        "START_REPLICATION SLOT {} LOGICAL {from} (proto_version '1', publication_names {}, messages '{messages}')",
        quote_ident(slot)?,
        quote_literal(&names),
    ))
}

fn quote_ident(name: &str) -> Result<String, Error> {
    if name.is_empty() || name.contains('\0') {
        return Err(Error::Config(format!(
            "invalid identifier {name:?}: empty or contains NUL"
        )));
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn single_row(rows: Vec<Vec<Option<String>>>, what: &str) -> Result<Vec<Option<String>>, Error> {
    rows.into_iter()
        .next()
        .ok_or_else(|| Error::Protocol(format!("{what} returned no row")))
}

fn parse_lsn(text: Option<String>, what: &str) -> Result<Lsn, Error> {
    text.and_then(|t| t.parse().ok())
        .ok_or_else(|| Error::Protocol(format!("{what}: missing or invalid LSN")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_command_quotes_every_name() {
        let sql = start_replication_sql(
            "my\"slot",
            Lsn(0x1_0000_0010),
            &["pub one".into(), "it's".into()],
            true,
        )
        .unwrap();
        assert_eq!(
            sql,
            "START_REPLICATION SLOT \"my\"\"slot\" LOGICAL 1/10 (proto_version '1', \
             publication_names '\"pub one\",\"it''s\"', messages 'true')"
        );
    }

    #[test]
    fn rejects_empty_and_nul_names() {
        assert!(start_replication_sql("", Lsn::ZERO, &["p".into()], false).is_err());
        assert!(start_replication_sql("s", Lsn::ZERO, &["p\0".into()], false).is_err());
        assert!(start_replication_sql("s", Lsn::ZERO, &[], false).is_err());
    }
}
