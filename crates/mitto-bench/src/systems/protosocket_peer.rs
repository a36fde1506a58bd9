//! protosocket-rpc (kvc0/protosocket): length-delimited prost messages, one message type for
//! requests and responses carrying the rpc id, a control code and the payload.

use crate::runtime::ServerRuntime;
use bytes::Bytes;
use protosocket::{PooledEncoder, SocketListener, SocketResult};
use protosocket_prost::{ProstDecoder, ProstSerializer};
use protosocket_rpc::client::{Configuration, RpcClient, TcpStreamConnector};
use protosocket_rpc::server::{ConnectionService, RpcKind, SocketRpcServer, SocketService};
use protosocket_rpc::ProtosocketControlCode;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use tokio::net::{TcpListener, TcpStream};

/// The one message both ways.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct EchoMsg {
    /// Correlates a response with its request.
    #[prost(uint64, tag = "1")]
    pub(crate) id: u64,
    /// [`ProtosocketControlCode`] as a number.
    #[prost(uint32, tag = "2")]
    pub(crate) code: u32,
    /// The echoed bytes.
    #[prost(bytes = "bytes", tag = "3")]
    pub(crate) payload: Bytes,
}

impl protosocket_rpc::Message for EchoMsg {
    fn message_id(&self) -> u64 {
        self.id
    }
    fn control_code(&self) -> ProtosocketControlCode {
        ProtosocketControlCode::from_u8(u8::try_from(self.code).unwrap_or(u8::MAX))
    }
    fn set_message_id(&mut self, message_id: u64) {
        self.id = message_id;
    }
    fn cancelled(message_id: u64) -> Self {
        EchoMsg {
            id: message_id,
            code: u32::from(ProtosocketControlCode::Cancel.as_u8()),
            payload: Bytes::new(),
        }
    }
    fn ended(message_id: u64) -> Self {
        EchoMsg {
            id: message_id,
            code: u32::from(ProtosocketControlCode::End.as_u8()),
            payload: Bytes::new(),
        }
    }
}

type Codec = (
    PooledEncoder<ProstSerializer<EchoMsg>>,
    ProstDecoder<EchoMsg>,
);

/// A plain tokio listener with `TCP_NODELAY` on accepted sockets.
struct Listener(TcpListener);

impl SocketListener for Listener {
    type Stream = TcpStream;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<SocketResult<TcpStream>> {
        match self.0.poll_accept(cx) {
            Poll::Ready(Ok((s, _))) => {
                let _ = s.set_nodelay(true);
                Poll::Ready(SocketResult::Stream(s))
            }
            Poll::Ready(Err(_)) => Poll::Ready(SocketResult::Disconnect),
            Poll::Pending => Poll::Pending,
        }
    }
}

struct EchoConnection;

impl ConnectionService for EchoConnection {
    type Codec = Codec;
    type Request = EchoMsg;
    type Response = EchoMsg;
    type UnaryFutureType = std::future::Ready<EchoMsg>;
    type StreamType = futures::stream::Empty<EchoMsg>;

    fn new_rpc(&mut self, request: EchoMsg) -> RpcKind<Self::UnaryFutureType, Self::StreamType> {
        RpcKind::Unary(std::future::ready(request))
    }
}

struct EchoSocketService;

impl SocketService for EchoSocketService {
    type ConnectionService = EchoConnection;
    type SocketListener = Listener;

    fn codec(&mut self) -> Codec {
        Codec::default()
    }

    fn new_stream_service(&mut self, _stream: &TcpStream) -> EchoConnection {
        EchoConnection
    }
}

/// Buffer limits given to both ends: 4 MiB buffers, 1 MiB increments, 1024 queued messages
/// (above the 256 calls in flight, so the queue never throttles).
const MAX_BUFFER: usize = 4 << 20;
const BUFFER_INCREMENT: usize = 1 << 20;
const MAX_QUEUED: usize = 1024;

/// Starts the protosocket-rpc echo server on `srt`; returns its address.
pub(crate) async fn start(srt: &ServerRuntime) -> anyhow::Result<SocketAddr> {
    srt.run(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = SocketRpcServer::new(
            Listener(listener),
            EchoSocketService,
            MAX_BUFFER,
            BUFFER_INCREMENT,
            MAX_QUEUED,
        )?;
        tokio::spawn(server);
        Ok(addr)
    })
    .await
}

/// A protosocket-rpc client: one connection driven by a task on the caller's runtime.
pub(crate) struct PsClient {
    rpc: RpcClient<EchoMsg, EchoMsg>,
    next_id: AtomicU64,
}

/// Connects to the server at `addr`.
pub(crate) async fn connect(addr: SocketAddr) -> anyhow::Result<PsClient> {
    let mut config = Configuration::new(TcpStreamConnector);
    config.max_buffer_length(MAX_BUFFER);
    config.buffer_allocation_increment(BUFFER_INCREMENT);
    config.max_queued_outbound_messages(MAX_QUEUED);
    let (rpc, connection) = protosocket_rpc::client::connect::<Codec, _>(addr, &config).await?;
    tokio::spawn(connection);
    Ok(PsClient {
        rpc,
        next_id: AtomicU64::new(1),
    })
}

/// One unary call, checking the echoed length.
pub(crate) async fn call(client: &PsClient, payload: Bytes) -> anyhow::Result<()> {
    let n = payload.len();
    let id = client.next_id.fetch_add(1, Ordering::Relaxed);
    let completion = client.rpc.send_unary(EchoMsg {
        id,
        code: u32::from(ProtosocketControlCode::Normal.as_u8()),
        payload,
    })?;
    let reply = completion.await?;
    anyhow::ensure!(
        reply.id == id && reply.payload.len() == n,
        "protosocket-rpc echo mismatch"
    );
    Ok(())
}
