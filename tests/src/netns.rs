//! A small LAN made of network namespaces for the local discovery test:
//! two "hosts" (`ip netns`), each with one veth interface plugged into a
//! bridge that lives in a third namespace. Nothing is added to the test
//! machine's own namespace; dropping the [`Lan`] deletes all three.
//! Needs root (and `ip`); [`Lan::available`] says why not otherwise.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::node::{Node, NodeHome};
use crate::rest::Rest;
use crate::{our_binary, wait, Proc};

pub struct Lan {
    pub hosts: Vec<String>,
    bridge: String,
    /// IPv4 address of each host, in order.
    pub ips: Vec<String>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Lan {
    /// `Err(reason)` when namespaces cannot be made here.
    pub fn available() -> Result<(), String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root (ip netns needs it)".into());
        }
        ip(&["-V"]).map_err(|e| format!("{e} (install iproute2)"))?;
        // Root without CAP_NET_ADMIN/CAP_SYS_ADMIN (a plain container)
        // cannot make namespaces either.
        let probe = format!("stprobe{:x}", rand::random::<u32>() & 0xfffff);
        ip(&["netns", "add", &probe])
            .map_err(|e| format!("cannot create a network namespace here: {e}"))?;
        let _ = ip(&["netns", "del", &probe]);
        Ok(())
    }

    /// `n` hosts on 10.77.X.0/24 (X random), all up, with loopback.
    pub fn create(n: usize) -> Result<Lan, String> {
        let tag = format!("{:x}", rand::random::<u32>() & 0xfffff);
        let net = rand::random_range(1..250u8);
        let bridge = format!("stbr{tag}");
        let mut lan = Lan {
            hosts: Vec::new(),
            bridge: bridge.clone(),
            ips: Vec::new(),
        };
        ip(&["netns", "add", &bridge])?;
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bridge, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let host = format!("sth{i}{tag}");
            ip(&["netns", "add", &host])?;
            lan.hosts.push(host.clone());
            let port = format!("p{i}");
            ip(&[
                "-n", &bridge, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &host,
            ])?;
            ip(&["-n", &bridge, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &bridge, "link", "set", &port, "up"])?;
            let addr = format!("10.77.{net}.{}", i + 1);
            ip(&[
                "-n",
                &host,
                "addr",
                "add",
                &format!("{addr}/24"),
                "brd",
                "+",
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &host, "link", "set", "eth0", "up"])?;
            ip(&["-n", &host, "link", "set", "lo", "up"])?;
            lan.ips.push(addr);
        }
        // IPv6 link-local addresses are usable once duplicate address
        // detection is over (about a second); multicast needs them.
        for host in &lan.hosts {
            let ready = wait::until(Duration::from_secs(10), Duration::from_millis(100), || {
                let out = Command::new("ip")
                    .args(["-n", host, "-6", "addr", "show", "dev", "eth0"])
                    .output()
                    .ok()?;
                let text = String::from_utf8_lossy(&out.stdout);
                (text.contains("inet6") && !text.contains("tentative")).then_some(())
            });
            if ready.is_none() {
                return Err(format!("{host}: no usable IPv6 link-local address"));
            }
        }
        Ok(lan)
    }

    /// Runs `f` on a thread that has entered host `i`'s namespace.
    pub fn run_in<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> T {
        let name = self.hosts[i].clone();
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                enter(&name);
                f()
            });
            match h.join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    /// Starts our node from `home` inside host `i` and waits for its REST
    /// API (reachable only from inside that namespace, see [`Lan::run_in`]).
    pub fn start_node(&self, i: usize, home: &NodeHome) -> Node {
        let file = std::fs::File::open(Path::new("/var/run/netns").join(&self.hosts[i]))
            .expect("open netns");
        let fd = file.as_raw_fd();
        let mut cmd = Command::new(our_binary("node"));
        cmd.arg("serve").arg("--home").arg(&home.dir);
        cmd.env("NO_COLOR", "1").env(
            "LOG_LEVEL",
            "info,node::discovery=debug,node::connect=debug",
        );
        // SAFETY: only setns(2), async-signal-safe, runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let proc = Proc::spawn("node", cmd, &home.dir.join("node.log"));
        drop(file);
        let mut node = Node {
            home: home.clone(),
            proc,
        };
        let up = self.run_in(i, || {
            wait::until(Duration::from_secs(30), Duration::from_millis(100), || {
                rest(&node.home).get("/rest/system/ping").ok()
            })
        });
        assert!(
            up.is_some() && node.proc.alive(),
            "node in {} did not come up:\n{}",
            self.hosts[i],
            node.proc.log_tail(30)
        );
        node
    }
}

impl Lan {
    /// Starts real Syncthing from an initialised (isolated) home inside
    /// host `i` and waits for its REST API.
    pub fn start_syncthing(&self, i: usize, home: crate::SyncthingHome) -> crate::Syncthing {
        let file = std::fs::File::open(Path::new("/var/run/netns").join(&self.hosts[i]))
            .expect("open netns");
        let fd = file.as_raw_fd();
        let mut cmd = Command::new(crate::require_program("syncthing", "syncthing"));
        cmd.env("STNOUPGRADE", "1")
            .env("STNODEFAULTFOLDER", "1")
            .env("STNORESTART", "1")
            .env("STMONITORED", "1")
            .env_remove("STTRACE")
            .args(crate::syncthing::SERVE_ARGS)
            .arg(&home.dir);
        // SAFETY: only setns(2), async-signal-safe, runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let proc = Proc::spawn("syncthing", cmd, &home.dir.join("syncthing.log"));
        drop(file);
        let mut st = crate::Syncthing { home, proc };
        let up = self.run_in(i, || {
            wait::until(Duration::from_secs(30), Duration::from_millis(100), || {
                st.get("/rest/system/ping").ok()
            })
        });
        assert!(
            up.is_some() && st.proc.alive(),
            "syncthing in {} did not come up:\n{}",
            self.hosts[i],
            st.proc.log_tail(30)
        );
        st
    }
}

/// The REST client of a node (use it inside [`Lan::run_in`]).
pub fn rest(home: &NodeHome) -> Rest<'_> {
    Rest {
        port: home.gui_port,
        api_key: &home.api_key,
        timeout: Duration::from_secs(10),
        https: None,
    }
}

fn enter(name: &str) {
    let f = std::fs::File::open(Path::new("/var/run/netns").join(name)).expect("open netns");
    // SAFETY: setns on a descriptor we own; affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {name}: {}", std::io::Error::last_os_error());
}

impl Drop for Lan {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = ip(&["netns", "del", h]);
        }
        let _ = ip(&["netns", "del", &self.bridge]);
    }
}

/// A network namespace of its own with addresses on its `lo`, for tests
/// that need many IPv6 addresses (root only; see `netns::Lan::available`).
/// Dropping it deletes the namespace.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A namespace with `lo` up and carrying `addrs` (CIDR, e.g. `fd00::1/64`).
    pub fn create(addrs: &[&str]) -> Result<Netns, String> {
        let name = format!("strelay{:x}", rand::random::<u32>() & 0xfffff);
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        for a in addrs {
            // nodad: usable at once, no duplicate detection on loopback.
            ip(&["-n", &ns.name, "addr", "add", a, "dev", "lo", "nodad"])?;
        }
        Ok(ns)
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a thread that has entered the namespace.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = Path::new("/var/run/netns").join(&self.name);
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                let file = std::fs::File::open(&path).expect("open netns");
                // SAFETY: setns(2) on this thread only, with an fd we hold.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            });
            match h.join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
