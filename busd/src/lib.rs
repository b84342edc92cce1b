//! busd: `org.freedesktop.systemd1` over cgroupfs, for kata-agent's systemd
//! cgroup driver in a guest without systemd (docs/busd.md).
//!
//! Without a bus daemon busd is the system bus itself (every connection a
//! zbus peer-to-peer server connection that also answers
//! `org.freedesktop.DBus`); with one it owns `org.freedesktop.systemd1`
//! there. Either way each Manager call becomes reads and writes of cgroup
//! files under a root given on the command line.

pub mod cgroup;
pub mod cli;
pub mod dbus;
pub mod manager;
pub mod props;
pub mod rt;
pub mod sasl;
pub mod unit;
