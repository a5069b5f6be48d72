//! Tier 1's listener: connections redirected by the namespace's nft rules. The original
//! destination comes from the socket (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST); a synthetic DNS
//! address is mapped back to its name.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};

use super::dns::SyntheticNames;
use super::{ConnInfo, Proxy, quota, tunnel};
use crate::audit::Event;

/// Accepts redirected connections until the listener fails for good.
pub async fn serve_transparent(
    proxy: Arc<Proxy>,
    names: Arc<SyntheticNames>,
    listener: TcpListener,
) {
    loop {
        let ticket = quota::ticket(&proxy).await;
        match listener.accept().await {
            Ok((stream, client)) => {
                proxy.audit().stats().connection();
                let (served, names) = (proxy.clone(), names.clone());
                proxy.hand_off(stream, move |stream| {
                    handle(served, names, stream, client, ticket)
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let sock = SockRef::from(stream);
    let local = stream.local_addr().ok()?;
    let dst = match local {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        SocketAddr::V6(_) => sock.original_dst_v6(),
    }
    .ok()?
    .as_socket()?;
    // A connection made straight to the proxy's own port was not redirected.
    (dst != local).then_some(dst)
}

async fn handle(
    proxy: Arc<Proxy>,
    names: Arc<SyntheticNames>,
    stream: TcpStream,
    client: SocketAddr,
    ticket: quota::Ticket,
) {
    let Some(admitted) = quota::admit(&proxy, &stream, client, ticket).await else {
        return;
    };
    let exec = admitted.exec.clone();
    let process = admitted.process.clone();
    // Its place in the exec's budget, for as long as the connection is open.
    let _admitted = super::workers::keep(admitted);
    let Some(dst) = original_dst(&stream) else {
        let conn = ConnInfo {
            client,
            exec,
            process,
            target_host: None,
            port: 443,
            sni: None,
            tls: false,
        };
        // Boxed: see explicit.rs.
        Box::pin(tunnel::handle(proxy, stream, conn)).await;
        return;
    };
    // While the connection is open, its name keeps its synthetic address.
    let held = names.hold(dst.ip());
    let target_host = match held.as_ref().map(|h| h.name.clone()) {
        Some(name) => name,
        None if SyntheticNames::is_synthetic(dst.ip()) => {
            let mut event = Event::new("connection", "block");
            event.exec = exec;
            super::name_process(&mut event, process.as_deref());
            event.client = Some(client.to_string());
            event.dst = Some(dst.to_string());
            event.reason = Some("synthetic address that netcage's DNS never handed out".into());
            proxy.cfg.audit.log(event);
            return;
        }
        None => match dst.ip() {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => v6.to_canonical().to_string(),
        },
    };
    let _held = held.and_then(super::workers::keep);
    let conn = ConnInfo {
        client,
        exec,
        process,
        target_host: Some(target_host),
        port: dst.port(),
        sni: None,
        tls: false,
    };
    Box::pin(tunnel::handle(proxy, stream, conn)).await;
}
