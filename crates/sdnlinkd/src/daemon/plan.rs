//! `sdnlinkd plan`: what a full sync would change now, from the plans the syncs use.

use super::*;

/// What `sdnlinkd plan` prints: per subsystem, what a full sync would change now.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DryRun {
    pub proxy_backend: String,
    pub tunnel: PlanPart,
    pub proxy: PlanPart,
    pub node: PlanPart,
}

/// One subsystem's part of a [`DryRun`]: its operations, or why it could not plan.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct PlanPart {
    pub operations: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl PlanPart {
    fn of(r: Result<Vec<String>, String>) -> PlanPart {
        match r {
            Ok(operations) => PlanPart {
                operations,
                error: None,
            },
            Err(e) => PlanPart {
                operations: Vec::new(),
                error: Some(e),
            },
        }
    }
}

impl DryRun {
    /// Whether a full sync would change nothing (and every subsystem could tell).
    pub fn is_empty(&self) -> bool {
        [&self.tunnel, &self.proxy, &self.node]
            .iter()
            .all(|p| p.operations.is_empty() && p.error.is_none())
    }
}

impl std::fmt::Display for DryRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proxy = format!("proxy ({})", self.proxy_backend);
        for (name, part) in [
            ("tunnel", &self.tunnel),
            (proxy.as_str(), &self.proxy),
            ("node", &self.node),
        ] {
            match (&part.error, part.operations.len()) {
                (Some(e), _) => writeln!(f, "{name}: cannot plan: {e}")?,
                (None, 0) => writeln!(f, "{name}: nothing to change")?,
                (None, n) => {
                    writeln!(f, "{name}: {n} change{}", if n == 1 { "" } else { "s" })?;
                    for op in &part.operations {
                        writeln!(f, "  {op}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl Daemon {
    /// What a full sync would change right now, per subsystem, from the plans the syncs use;
    /// nothing is sent and nothing committed (`sdnlinkd plan`). The TCP MSS and inbound
    /// filter tables are whole-table replacements and are not listed.
    pub(super) async fn plan(&mut self) -> DryRun {
        let cfg = self.cfg.clone();
        let snaps = self.clusters.snapshots();
        let held = self.clusters.held(&cfg);
        let want = desired::Desired::compute(&cfg, &snaps, held);
        let tunnel = PlanPart::of(
            self.tunnel
                .plan_full(&want.peers)
                .await
                .map_err(|e| e.to_string()),
        );
        let proxy = PlanPart::of(
            self.proxy
                .plan_full(&want.proxy)
                .await
                .map(|text| text.lines().map(str::to_string).collect())
                .map_err(|e| e.to_string()),
        );
        let extras = self.node_extras(&want);
        let node_desired = node::NodeDesired::from_config(&cfg, &extras);
        let node = PlanPart::of(
            self.plumbing
                .plan_full(&node_desired)
                .await
                .map_err(|e| e.to_string()),
        );
        DryRun {
            proxy_backend: self.proxy.name().to_string(),
            tunnel,
            proxy,
            node,
        }
    }
}

#[cfg(test)]
mod dry_run_tests {
    use super::*;

    fn part(ops: &[&str], error: Option<&str>) -> PlanPart {
        PlanPart {
            operations: ops.iter().map(|s| s.to_string()).collect(),
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn a_dry_run_prints_each_part_and_round_trips_through_json() {
        let d = DryRun {
            proxy_backend: "ipvs".into(),
            tunnel: part(&[], None),
            proxy: part(
                &[
                    "add service tcp 10.120.0.10:80",
                    "add real 10.120.0.10:80 -> 10.20.1.5:8080",
                ],
                None,
            ),
            node: part(&[], Some("netlink: permission denied")),
        };
        assert_eq!(
            d.to_string(),
            "tunnel: nothing to change\nproxy (ipvs): 2 changes\n  add service tcp 10.120.0.10:80\n  add real 10.120.0.10:80 -> 10.20.1.5:8080\nnode: cannot plan: netlink: permission denied\n"
        );
        assert!(!d.is_empty());
        let back: DryRun =
            serde_json::from_value(serde_json::to_value(&d).expect("serializes")).expect("parses");
        assert_eq!(back.to_string(), d.to_string());
        let idle = DryRun {
            proxy_backend: "nftables".into(),
            tunnel: part(&[], None),
            proxy: part(&[], None),
            node: part(&[], None),
        };
        assert!(idle.is_empty());
        // A part that could not plan is not "nothing to change".
        let blind = DryRun {
            node: part(&[], Some("x")),
            ..idle
        };
        assert!(!blind.is_empty());
    }
}
