//! The DNS listener of one network: hickory-server with our own request handler.
//!
//! Takes a listen address (the network's gateway, port 53), the network's name, the
//! shared `Registry` and an `Upstream`; gives a running server (UDP + TCP) on the current
//! tokio runtime and a handle to stop it. The network is fixed per listener: that is how
//! an answer is limited to the asker's network.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol as DnsProtocol;
use hickory_server::proto::op::{Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::A;
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};
use tracing::debug;

use super::records::{Answer, Registry};
use super::upstream::{Forwarder, Upstream};

/// DNS server failures.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot bind the dns listener on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Local answers carry a zero TTL: containers come and go, and a cached address would
/// outlive a recreated container (the "no stale answer" requirement).
const LOCAL_TTL: u32 = 0;

struct Handler {
    network: String,
    registry: Registry,
    forwarder: Forwarder,
}

impl Handler {
    async fn respond<R: ResponseHandler>(&self, request: &Request, mut rh: R) -> ResponseInfo {
        let fail = |code| {
            let mut m = Metadata::response_from_request(&request.metadata);
            m.response_code = code;
            ResponseInfo::from(hickory_server::proto::op::Header {
                metadata: m,
                counts: Default::default(),
            })
        };
        if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Query
        {
            let resp = MessageResponseBuilder::from_message_request(request)
                .error_msg(&request.metadata, ResponseCode::NotImp);
            return rh
                .send_response(resp)
                .await
                .unwrap_or_else(|_| fail(ResponseCode::ServFail));
        }
        let Ok(info) = request.request_info() else {
            let resp = MessageResponseBuilder::from_message_request(request)
                .error_msg(&request.metadata, ResponseCode::FormErr);
            return rh
                .send_response(resp)
                .await
                .unwrap_or_else(|_| fail(ResponseCode::ServFail));
        };
        let qname: Name = info.query.name().into();
        let qtype = info.query.query_type();
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.recursion_available = true;
        match self.registry.resolve(&self.network, &qname.to_ascii()) {
            Answer::Addrs(ips) => {
                meta.authoritative = true;
                // AAAA and other types of a known name: empty NOERROR (NODATA), which is
                // what busybox nslookup's parallel AAAA query needs.
                let records: Vec<Record> = if matches!(qtype, RecordType::A | RecordType::ANY) {
                    ips.iter()
                        .map(|ip| Record::from_rdata(qname.clone(), LOCAL_TTL, RData::A(A(*ip))))
                        .collect()
                } else {
                    Vec::new()
                };
                debug!(network = %self.network, name = %qname, ?qtype, answers = records.len(), "dns local answer");
                let resp = MessageResponseBuilder::from_message_request(request).build(
                    meta,
                    records.iter(),
                    [],
                    [],
                    [],
                );
                rh.send_response(resp)
                    .await
                    .unwrap_or_else(|_| fail(ResponseCode::ServFail))
            }
            Answer::NxDomain => {
                meta.authoritative = true;
                meta.response_code = ResponseCode::NXDomain;
                debug!(network = %self.network, name = %qname, "dns nxdomain");
                let resp =
                    MessageResponseBuilder::from_message_request(request).build_no_records(meta);
                rh.send_response(resp)
                    .await
                    .unwrap_or_else(|_| fail(ResponseCode::ServFail))
            }
            Answer::Forward => {
                let tcp = request.protocol() == DnsProtocol::Tcp;
                let answer = self
                    .forwarder
                    .forward(request.as_slice(), tcp)
                    .await
                    .and_then(|raw| Message::from_vec(&raw).ok());
                match answer {
                    Some(msg) => {
                        let mut m = msg.metadata;
                        m.id = request.metadata.id;
                        let resp = MessageResponseBuilder::from_message_request(request).build(
                            m,
                            msg.answers.iter(),
                            msg.authorities.iter(),
                            [],
                            msg.additionals.iter(),
                        );
                        rh.send_response(resp)
                            .await
                            .unwrap_or_else(|_| fail(ResponseCode::ServFail))
                    }
                    None => {
                        let resp = MessageResponseBuilder::from_message_request(request)
                            .error_msg(&request.metadata, ResponseCode::ServFail);
                        rh.send_response(resp)
                            .await
                            .unwrap_or_else(|_| fail(ResponseCode::ServFail))
                    }
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.respond(request, response_handle).await
    }
}

/// A running listener; stops on `shutdown` or when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    server: Server<Handler>,
}

impl DnsServer {
    /// Binds UDP and TCP on `listen` (normally `<gateway>:53`) and serves `network`'s view
    /// of `registry`. Port 0 picks a free port (tests); `local_addr` tells which.
    pub async fn spawn(
        listen: SocketAddr,
        network: &str,
        registry: Registry,
        upstream: Upstream,
    ) -> Result<Self, DnsError> {
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(|source| DnsError::Bind {
                addr: listen,
                source,
            })?;
        let addr = udp.local_addr().map_err(|source| DnsError::Bind {
            addr: listen,
            source,
        })?;
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| DnsError::Bind { addr, source })?;
        let mut server = Server::new(Handler {
            network: network.to_owned(),
            registry,
            forwarder: Forwarder::new(upstream),
        });
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 65535);
        debug!(%addr, network, "dns listener started");
        Ok(DnsServer { addr, server })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting queries and waits for the listener tasks to end.
    pub async fn shutdown(mut self) {
        let _ = self.server.shutdown_gracefully().await;
        debug!(addr = %self.addr, "dns listener stopped");
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.server.shutdown_token().cancel();
    }
}
