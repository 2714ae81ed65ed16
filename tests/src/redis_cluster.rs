//! A real Redis Cluster on 127.0.0.1: Debian's `redis-server` nodes joined
//! by `redis-cli --cluster create`, 3 masters with one replica each, all
//! behind a password. Each node has its own directory and port; nodes are
//! stopped by the PID this fixture started, never by name.
//!
//! `cluster-node-timeout` is short so a killed master's replica is
//! promoted within a few seconds, as the failover tests need. No
//! persistence: a killed node restarts empty and rejoins through its
//! `nodes.conf` (kept in its directory).
//!
//! TLS: Debian's 7.0 build has it (`--tls-port` is understood), but the
//! fixture does not use it; discosrv's `rediss://` path is the redis
//! crate's, not ours.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::process::Proc;
use crate::programs::require_program;
use crate::{pick_port, wait};

/// The password of every node (requirepass and masterauth).
pub const PASSWORD: &str = "cluster-test-secret";

/// Milliseconds a master may be unreachable before its replica takes over.
pub const NODE_TIMEOUT_MS: u64 = 1500;

/// One node of the cluster.
pub struct Node {
    pub port: u16,
    /// The cluster bus port, picked too: the default (port + 10000)
    /// would fall outside the harness's range of free ports.
    pub bus_port: u16,
    pub dir: PathBuf,
    proc: Option<Proc>,
}

impl Node {
    fn start(dir: &Path, port: u16, bus_port: u16) -> Node {
        std::fs::create_dir_all(dir).expect("redis node dir");
        let mut cmd = Command::new(require_program("redis-server", "redis-server"));
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            &bus_port.to_string(),
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            &NODE_TIMEOUT_MS.to_string(),
            "--requirepass",
            PASSWORD,
            "--masterauth",
            PASSWORD,
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir);
        let mut proc = Proc::spawn("redis-server", cmd, &dir.join("redis.log"));
        assert!(
            wait::listening(port, Duration::from_secs(20)) && proc.alive(),
            "redis-server (cluster node {port}) did not start:\n{}",
            proc.log_tail(20)
        );
        Node {
            port,
            bus_port,
            dir: dir.to_path_buf(),
            proc: Some(proc),
        }
    }

    pub fn running(&self) -> bool {
        self.proc.is_some()
    }
}

/// A running Redis Cluster of six nodes.
pub struct RedisCluster {
    pub nodes: Vec<Node>,
}

impl RedisCluster {
    /// Starts six nodes and creates the cluster; returns once every node
    /// reports `cluster_state:ok` and sees three masters with a replica.
    pub fn start(dir: &Path) -> RedisCluster {
        let nodes: Vec<Node> = (0..6)
            .map(|i| {
                let (port, bus_port) = (pick_port(), pick_port());
                Node::start(&dir.join(format!("node{i}-{port}")), port, bus_port)
            })
            .collect();
        let cluster = RedisCluster { nodes };
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(
            cluster
                .nodes
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.port)),
        );
        args.extend(["--cluster-replicas", "1", "--cluster-yes"].map(String::from));
        let out = cli_output(cluster.nodes[0].port, &args);
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_ok(Duration::from_secs(60));
        cluster
    }

    /// `redis://:PASSWORD@127.0.0.1:PORT/` of every node, as seeds.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://:{PASSWORD}@127.0.0.1:{}/", n.port))
            .collect()
    }

    /// Ports of the running nodes.
    pub fn running_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.running())
            .map(|n| n.port)
            .collect()
    }

    /// Runs `redis-cli -a PASSWORD -p PORT ARGS…` and returns its stdout;
    /// empty if it failed (a node may be down).
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let out = cli_output(port, &args);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until every running node says `cluster_state:ok`, knows the
    /// same three masters each with a connected replica among the running
    /// nodes, and all 16384 slots are covered.
    pub fn wait_ok(&self, limit: Duration) {
        let ok = wait::until(limit, Duration::from_millis(250), || {
            let ports = self.running_ports();
            let all_ok = ports.iter().all(|&p| {
                let info = self.cli(p, &["cluster", "info"]);
                info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
            });
            (all_ok && self.masters().len() == 3).then_some(())
        });
        assert!(
            ok.is_some(),
            "Redis Cluster not ok in {limit:?}:\n{}",
            self.describe()
        );
    }

    /// The masters holding slots, as (port, slot ranges), seen by a running node.
    pub fn masters(&self) -> Vec<(u16, Vec<(u16, u16)>)> {
        let Some(&p) = self.running_ports().first() else {
            return Vec::new();
        };
        let nodes = self.cli(p, &["cluster", "nodes"]);
        let mut out = Vec::new();
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let Some(port) = f[1]
                .split('@')
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
            else {
                continue;
            };
            let ranges: Vec<(u16, u16)> = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|x| (x, x)),
                })
                .collect();
            if !ranges.is_empty() {
                out.push((port, ranges));
            }
        }
        out.sort();
        out
    }

    /// The master port holding `slot`.
    pub fn master_of_slot(&self, slot: u16) -> Option<u16> {
        self.masters()
            .into_iter()
            .find(|(_, r)| r.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .map(|(p, _)| p)
    }

    /// The replica port of master `port`, as its own `role` says.
    pub fn replica_of(&self, master: u16) -> Option<u16> {
        self.running_ports().into_iter().find(|&p| {
            let info = self.cli(p, &["info", "replication"]);
            info.contains("role:slave") && info.contains(&format!("master_port:{master}"))
        })
    }

    /// `CLUSTER KEYSLOT key`.
    pub fn keyslot(&self, key: &str) -> u16 {
        let p = self.running_ports()[0];
        self.cli(p, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT answers a number")
    }

    /// The slot of `key` computed here (CRC16/XMODEM mod 16384, hash tags
    /// honoured), for choosing keys without a round trip per key.
    pub fn slot_of(key: &str) -> u16 {
        let b = key.as_bytes();
        let hashed = match b.iter().position(|&c| c == b'{') {
            Some(open) => match b[open + 1..].iter().position(|&c| c == b'}') {
                Some(len) if len > 0 => &b[open + 1..open + 1 + len],
                _ => b,
            },
            None => b,
        };
        let mut crc: u16 = 0;
        for &byte in hashed {
            crc ^= u16::from(byte) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc % 16384
    }

    /// Keys matching `pattern` on each master (SCAN on the master itself).
    pub fn keys_per_master(&self, pattern: &str) -> Vec<(u16, Vec<String>)> {
        self.masters()
            .into_iter()
            .map(|(p, _)| {
                let keys = self.cli(p, &["--scan", "--pattern", pattern]);
                (p, keys.lines().map(str::to_string).collect())
            })
            .collect()
    }

    /// Kills node `port` hard (SIGKILL), as a crash would.
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster");
        if let Some(mut p) = node.proc.take() {
            p.signal(libc::SIGKILL);
            let _ = p.wait_exit(Duration::from_secs(10));
        }
    }

    /// Restarts a stopped node on its port and directory; its `nodes.conf`
    /// makes it rejoin (a killed master comes back as a replica of the
    /// one promoted meanwhile).
    pub fn restart(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster");
        if node.proc.is_none() {
            let fresh = Node::start(&node.dir, port, node.bus_port);
            node.proc = fresh.proc;
        }
    }

    /// Total `used_memory` of the masters (bytes).
    pub fn masters_used_memory(&self) -> u64 {
        self.masters()
            .iter()
            .map(|(p, _)| {
                self.cli(*p, &["info", "memory"])
                    .lines()
                    .find_map(|l| l.strip_prefix("used_memory:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum()
    }

    /// `CLUSTER NODES` and `CLUSTER INFO` of the running nodes, for failure messages.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for p in self.running_ports() {
            s.push_str(&format!("--- node {p}\n"));
            s.push_str(&self.cli(p, &["cluster", "nodes"]));
            s.push_str(
                &self
                    .cli(p, &["cluster", "info"])
                    .lines()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
            s.push('\n');
        }
        s
    }
}

fn cli_output(port: u16, args: &[String]) -> Output {
    let mut cmd = Command::new(require_program("redis-cli", "redis-tools"));
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-a",
        PASSWORD,
        "--no-auth-warning",
    ])
    .args(args)
    .env_remove("REDISCLI_AUTH");
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}"))
}
