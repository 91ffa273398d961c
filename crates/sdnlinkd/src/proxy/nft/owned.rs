//! A small nftables table of ours kept equal to a desired value (the tunnel's MSS clamp and
//! inbound filter): a sync lists the table, compares it with the desired one ([`table::diff`])
//! and writes only the difference in one `nft -f -` transaction, nothing when they match.

use super::table::{self, diff, Table};
use super::{list_table_json, run_nft, NftError};
use crate::netns::{NetNs, NetnsError};
use std::path::PathBuf;

/// Errors of syncing one owned table.
#[derive(Debug, thiserror::Error)]
pub enum OwnedTableError {
    #[error("table {table}: {source}")]
    Nft {
        table: &'static str,
        #[source]
        source: NftError,
    },
    #[error("table {table}: {source}")]
    Parse {
        table: &'static str,
        #[source]
        source: table::ParseError,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// What a sync of an owned table did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableSync {
    /// The table already held the desired rules.
    Unchanged,
    /// The table was created or (partly) rewritten.
    Applied,
}

/// One table (`FAMILY NAME`) in one namespace, and what was last made true in the kernel.
pub struct OwnedTable {
    ns: NetNs,
    program: PathBuf,
    name: &'static str,
    committed: Option<Table>,
}

impl OwnedTable {
    /// The table `name` (`FAMILY NAME`) in `ns`; the first sync reads the kernel.
    pub fn new(ns: NetNs, name: &'static str) -> OwnedTable {
        OwnedTable {
            ns,
            program: PathBuf::from("nft"),
            name,
            committed: None,
        }
    }

    /// Parses `nft -j -p list table FAMILY NAME` of this table.
    pub fn parse_listing(name: &'static str, json: &str) -> Result<Table, OwnedTableError> {
        let (family, table) = name
            .split_once(' ')
            .expect("owned table names are `FAMILY NAME`");
        table::parse(json, family, table).map_err(|source| OwnedTableError::Parse {
            table: name,
            source,
        })
    }

    /// Makes the kernel's table equal to `want`. Incremental (`full` false): nothing when
    /// `want` is what the last sync made true. Full, or a changed `want`: lists the table and
    /// writes only what differs.
    pub async fn sync(&mut self, want: Table, full: bool) -> Result<TableSync, OwnedTableError> {
        if !full && self.committed.as_ref() == Some(&want) {
            return Ok(TableSync::Unchanged);
        }
        self.committed = None;
        let name = self.name;
        let nft_err = |source| OwnedTableError::Nft {
            table: name,
            source,
        };
        let p = self.program.clone();
        let listing = self
            .ns
            .run_async(move || list_table_json(&p, name))
            .await?
            .map_err(nft_err)?;
        let observed = match listing {
            Some(json) => Self::parse_listing(name, &json)?,
            None => Table::default(),
        };
        let tx = diff(name, &want, &observed);
        if !tx.is_empty() {
            let text = tx.text().to_string();
            let p = self.program.clone();
            self.ns
                .run_async(move || run_nft(&p, &["-f", "-"], Some(&text)))
                .await?
                .map_err(nft_err)?;
        }
        self.committed = Some(want);
        Ok(if tx.is_empty() {
            TableSync::Unchanged
        } else {
            TableSync::Applied
        })
    }
}
