//! All netlink work: bring up `lo` and route every destination to it. Nothing else imports
//! rtnetlink.

use std::net::{Ipv4Addr, Ipv6Addr};

use rtnetlink::packet_route::route::{RouteScope, RouteType};
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

/// The namespace's netlink socket and its typed verbs.
pub struct Netlink {
    handle: rtnetlink::Handle,
}

impl Netlink {
    /// Opens a netlink connection; the connection task runs on the current runtime.
    pub fn open() -> std::io::Result<Netlink> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    pub async fn link_up(&self, name: &str) -> Result<(), rtnetlink::Error> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_name(name).up().build())
            .execute()
            .await
    }

    /// `ip route add local default dev <index>` (IPv4) — every destination becomes local.
    pub async fn add_local_default_v4(&self, index: u32) -> Result<(), rtnetlink::Error> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .output_interface(index)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .table_id(255)
            .build();
        self.handle.route().add(route).execute().await
    }

    /// The same for IPv6.
    pub async fn add_local_default_v6(&self, index: u32) -> Result<(), rtnetlink::Error> {
        let route = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
            .output_interface(index)
            .kind(RouteType::Local)
            .table_id(255)
            .build();
        self.handle.route().add(route).execute().await
    }
}

/// Brings up `lo` and adds the local default routes, on a single-threaded runtime (the
/// caller may be a freshly forked, single-threaded process).
pub fn isolate_loopback() -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("netlink runtime: {e}"))?;
    rt.block_on(async {
        let nl = Netlink::open().map_err(|e| format!("netlink socket: {e}"))?;
        nl.link_up("lo")
            .await
            .map_err(|e| format!("bring up lo: {e}"))?;
        // lo is always interface 1 in a new network namespace.
        nl.add_local_default_v4(1)
            .await
            .map_err(|e| format!("route local default (IPv4): {e}"))?;
        if std::path::Path::new("/proc/sys/net/ipv6/conf/lo").exists() {
            nl.add_local_default_v6(1)
                .await
                .map_err(|e| format!("route local default (IPv6): {e}"))?;
        }
        Ok(())
    })
}
