//! A thin typed client over the generated one: takes and returns the core types
//! ([`MemoryLayout`], [`TouchedBlock`], [`Digest`], [`Opening`]) and does the packing.

use prost::bytes::Bytes;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::Status;

use crate::error::Error;
use crate::hash::Digest;
use crate::layout::MemoryLayout;
use crate::tree::witness::check_witness;
use crate::tree::{Backend, Opening, TouchedBlock, WitnessRow};

use super::auth::{AuthToken, SendBearer};
use super::codec;
use super::proto;
use super::proto::mem_commit_client::MemCommitClient;

/// Largest `WriteMemory` chunk the client sends, in bytes: well under the server's default
/// 256 MiB message limit, and a multiple of every cell size.
pub const WRITE_CHUNK_BYTES: usize = 4 << 20;

/// The client's own message limit in both directions, in bytes: gRPC frames cannot exceed
/// 4 GiB, and the server enforces its own limit.
const CLIENT_MAX_MESSAGE_BYTES: usize = u32::MAX as usize;

/// The generated client with the bearer-token interceptor, as [`Client::raw`] returns it.
pub type RawClient = MemCommitClient<InterceptedService<Channel, SendBearer>>;

/// A connection to a memcommit server. Cloning is cheap and clones share the connection.
#[derive(Clone, Debug)]
pub struct Client {
    inner: RawClient,
}

/// How [`Client::connect_with`] connects: credentials and TLS trust.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// Sent as `authorization: Bearer <token>` on every call (`--auth-token-file`).
    pub auth_token: Option<AuthToken>,
    /// PEM CA certificate(s) that the server's certificate must chain to (`--tls-ca`).
    /// Required for `https://` URLs: this build trusts no system roots.
    pub tls_ca_pem: Option<Vec<u8>>,
}

/// What `CreateTree` returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedTree {
    /// The id naming the tree in later calls.
    pub tree_id: String,
    /// The omitted levels chosen (the default when none was asked for; under `auto` the
    /// provisional default until [`Client::build`] reports the k chosen).
    pub omitted_levels: u32,
    /// Bytes of stored digests the empty tree reserves ([`crate::tree::node_bytes`] with no
    /// page present).
    pub node_bytes: u64,
    /// Raw bytes reserved at creation: 0, as no page is present yet.
    pub raw_bytes: u64,
    /// Raw bytes the layout declares ([`MemoryLayout::raw_bytes`]).
    pub declared_raw_bytes: u64,
}

/// What `BuildTree` returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltTree {
    /// Root step 0.
    pub root: Digest,
    /// The omitted levels the tree was built with (under `auto`: chosen at the build).
    pub omitted_levels: u32,
    /// Present pages of the image.
    pub present_pages: u64,
}

/// What `UpdateBlocks` returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateResult {
    /// The root before the batch.
    pub old_root: Digest,
    /// The root after the batch.
    pub new_root: Digest,
    /// Openings of the batch's blocks against `new_root`, in batch order (empty unless
    /// asked for).
    pub openings: Vec<Opening>,
    /// The call was a retry of a batch the server had already applied (its reply was
    /// lost); the roots are that batch's and nothing was applied again.
    pub already_applied: bool,
    /// The batch's witness (docs/design.md, "Update witness"), empty unless asked for.
    pub witness: Vec<WitnessRow>,
}

/// What an update asks back besides the roots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Returns {
    /// An opening of every touched block against the new root, in batch order.
    pub openings: bool,
    /// The batch's witness.
    pub witness: bool,
}

/// Attempts of [`Client::update_blocks_safely`]: the first send and two retries.
pub const UPDATE_ATTEMPTS: usize = 3;

/// Whether a failed call may have been applied with its reply lost in transport, so that
/// resending it with the same `expected_old_root` is the way to find out.
pub fn reply_may_be_lost(s: &Status) -> bool {
    use tonic::Code;
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    ) || (s.code() == Code::OutOfRange && s.message().contains("message length too large"))
}

/// A malformed response from the server.
fn bad_response(e: Error) -> Status {
    Status::internal(format!("malformed server response: {e}"))
}

/// A request-side encoding error (e.g. a block index ≥ 2^32).
fn bad_request(e: Error) -> Status {
    Status::from(e)
}

fn openings_from(openings: &[proto::Opening]) -> Result<Vec<Opening>, Status> {
    openings
        .iter()
        .enumerate()
        .map(|(i, o)| codec::opening_from_proto(o, &format!("openings[{i}]")))
        .collect::<Result<_, _>>()
        .map_err(bad_response)
}

impl Client {
    /// Connects to `url` (e.g. `http://127.0.0.1:50051`) without credentials or TLS, with
    /// message limits of 4 GiB each way.
    ///
    /// # Errors
    /// As [`Client::connect_with`].
    pub async fn connect(url: &str) -> Result<Client, Status> {
        Client::connect_with(url, &ConnectOptions::default()).await
    }

    /// Connects to `url` with `options`: `https://` URLs need `tls_ca_pem`, `http://` ones
    /// must not have it. The TLS handshake happens here.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` for a malformed URL, a scheme that does not match the TLS options,
    /// or a CA that does not parse; `UNAVAILABLE` if the server cannot be reached or the TLS
    /// handshake fails (e.g. an untrusted certificate).
    pub async fn connect_with(url: &str, options: &ConnectOptions) -> Result<Client, Status> {
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| Status::invalid_argument(format!("invalid url {url:?}: {e}")))?;
        let https = endpoint.uri().scheme_str() == Some("https");
        match (&options.tls_ca_pem, https) {
            (Some(ca), true) => {
                let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
                endpoint = endpoint
                    .tls_config(tls)
                    .map_err(|e| Status::invalid_argument(format!("TLS configuration: {e}")))?;
            }
            (None, true) => {
                return Err(Status::invalid_argument(format!(
                    "{url} is https: give the CA that signed the server's certificate \
                     (--tls-ca); this build trusts no system roots"
                )))
            }
            (Some(_), false) => {
                return Err(Status::invalid_argument(format!(
                    "a TLS CA was given but {url} is not https://"
                )))
            }
            (None, false) => {}
        }
        let interceptor = SendBearer::new(options.auth_token.as_ref()).map_err(Status::from)?;
        let channel = endpoint.connect().await.map_err(|e| {
            // The transport error's sources carry the TLS or socket reason.
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                why = format!("{why}: {s}");
                source = s.source();
            }
            Status::unavailable(format!("cannot connect to {url}: {why}"))
        })?;
        Ok(Client {
            inner: MemCommitClient::with_interceptor(channel, interceptor)
                .max_decoding_message_size(CLIENT_MAX_MESSAGE_BYTES)
                .max_encoding_message_size(CLIENT_MAX_MESSAGE_BYTES),
        })
    }

    /// The generated client, for calls this wrapper does not cover. It sends the
    /// connection's bearer token too.
    pub fn raw(&mut self) -> &mut RawClient {
        &mut self.inner
    }

    /// Creates a zeroed tree for `layout`.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` (layout, omitted_levels), `UNAVAILABLE` (backend cannot run on the
    /// server), `RESOURCE_EXHAUSTED` (a server limit).
    pub async fn create_tree(
        &mut self,
        layout: &MemoryLayout,
        omitted_levels: Option<u32>,
        backend: Backend,
    ) -> Result<CreatedTree, Status> {
        self.create(proto::CreateTreeRequest {
            layout: Some(codec::layout_to_proto(layout)),
            omitted_levels,
            backend: backend.name().into(),
            ..Default::default()
        })
        .await
    }

    /// Creates a zeroed tree for `layout` whose `omitted_levels` the server chooses at
    /// `BuildTree` (`auto_omitted_levels`): the smallest k whose tree over the pages present
    /// then fits `memory_budget` bytes (`None`: the server's budget).
    ///
    /// # Errors
    /// As [`Client::create_tree`]; `RESOURCE_EXHAUSTED` when not even the empty tree fits.
    pub async fn create_tree_auto(
        &mut self,
        layout: &MemoryLayout,
        backend: Backend,
        memory_budget: Option<u64>,
    ) -> Result<CreatedTree, Status> {
        self.create(proto::CreateTreeRequest {
            layout: Some(codec::layout_to_proto(layout)),
            backend: backend.name().into(),
            auto_omitted_levels: true,
            memory_budget_bytes: memory_budget,
            ..Default::default()
        })
        .await
    }

    async fn create(&mut self, req: proto::CreateTreeRequest) -> Result<CreatedTree, Status> {
        let r = self.inner.create_tree(req).await?.into_inner();
        Ok(CreatedTree {
            tree_id: r.tree_id,
            omitted_levels: r.omitted_levels,
            node_bytes: r.node_bytes,
            raw_bytes: r.raw_bytes,
            declared_raw_bytes: r.declared_raw_bytes,
        })
    }

    /// Writes `data` (raw little-endian cells) at `byte_offset` of `slot` in the initial
    /// image, as one stream of chunks of at most [`WRITE_CHUNK_BYTES`]. Returns the bytes
    /// written. Empty data still sends one chunk, so the tree and slot are checked.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` (slot, offset, length, field cell ≥ p), `NOT_FOUND`,
    /// `FAILED_PRECONDITION` (already built), `RESOURCE_EXHAUSTED` (limits). The stream is
    /// atomic: on any error, or if this future is dropped before the reply, nothing of it
    /// was written, and sending it again is safe either way (writes are absolute bytes).
    pub async fn write_memory(
        &mut self,
        tree_id: &str,
        slot: u32,
        byte_offset: u64,
        data: &[u8],
    ) -> Result<u64, Status> {
        // One copy into a shared buffer; each chunk is then a cheap slice of it.
        let data = Bytes::copy_from_slice(data);
        let starts: Vec<usize> = if data.is_empty() {
            vec![0]
        } else {
            (0..data.len()).step_by(WRITE_CHUNK_BYTES).collect()
        };
        let tree_id = tree_id.to_string();
        let chunks = starts.into_iter().enumerate().map(move |(i, start)| {
            let end = (start + WRITE_CHUNK_BYTES).min(data.len());
            proto::WriteMemoryChunk {
                // The server takes the tree from the first chunk.
                tree_id: if i == 0 {
                    tree_id.clone()
                } else {
                    String::new()
                },
                slot,
                byte_offset: byte_offset + start as u64,
                data: data.slice(start..end),
            }
        });
        let r = self
            .inner
            .write_memory(tokio_stream::iter(chunks))
            .await?
            .into_inner();
        Ok(r.bytes_written)
    }

    /// Builds the tree over the image written so far; returns root step 0.
    ///
    /// # Errors
    /// `NOT_FOUND`, `FAILED_PRECONDITION` (already built), `RESOURCE_EXHAUSTED`,
    /// `UNAVAILABLE`.
    pub async fn build_tree(&mut self, tree_id: &str) -> Result<Digest, Status> {
        self.build(tree_id).await.map(|b| b.root)
    }

    /// [`Client::build_tree`], with the k the tree was built with and its present pages.
    ///
    /// # Errors
    /// As [`Client::build_tree`]; `RESOURCE_EXHAUSTED` when no k fits an `auto` tree's
    /// budget or the built tree passes a limit.
    pub async fn build(&mut self, tree_id: &str) -> Result<BuiltTree, Status> {
        let r = self
            .inner
            .build_tree(proto::BuildTreeRequest {
                tree_id: tree_id.into(),
            })
            .await?
            .into_inner();
        Ok(BuiltTree {
            root: codec::digest_from_proto(r.root.as_ref(), "root").map_err(bad_response)?,
            omitted_levels: r.omitted_levels,
            present_pages: r.present_pages,
        })
    }

    /// Applies one batch atomically; with `return_openings`, also opens every block of the
    /// batch against the new root.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` (a bad batch; the tree is unchanged), `NOT_FOUND`,
    /// `FAILED_PRECONDITION` (not built), `RESOURCE_EXHAUSTED` (message size).
    pub async fn update_blocks(
        &mut self,
        tree_id: &str,
        blocks: &[TouchedBlock],
        return_openings: bool,
    ) -> Result<UpdateResult, Status> {
        let packed = codec::encode_blocks(blocks).map_err(bad_request)?;
        let returns = Returns {
            openings: return_openings,
            witness: false,
        };
        self.send_update(tree_id, packed, returns, None).await
    }

    /// Applies one batch exactly once although replies may be lost: it is sent with
    /// `expected_old_root = old_root`, and when a call fails in a way that may have lost an
    /// applied batch's reply ([`reply_may_be_lost`]), the identical request is sent again,
    /// up to [`UPDATE_ATTEMPTS`] in all. The server answers a retry of its last batch with
    /// that batch's roots and `already_applied`, without applying it twice.
    ///
    /// # Errors
    /// As [`Client::update_blocks`], plus `FAILED_PRECONDITION` when the tree's root is not
    /// `old_root` (another client changed it); the last error once attempts run out.
    pub async fn update_blocks_safely(
        &mut self,
        tree_id: &str,
        blocks: &[TouchedBlock],
        return_openings: bool,
        old_root: Digest,
    ) -> Result<UpdateResult, Status> {
        let returns = Returns {
            openings: return_openings,
            witness: false,
        };
        self.update_safely(tree_id, blocks, returns, old_root).await
    }

    /// As [`Client::update_blocks_safely`], asking back what `returns` says: with
    /// `returns.witness`, the result's `witness` holds the batch's rows, checked against its
    /// roots ([`crate::tree::witness::check_witness`]) before they are returned.
    ///
    /// # Errors
    /// As [`Client::update_blocks_safely`]; `RESOURCE_EXHAUSTED` when the witness would
    /// not fit the server's message limit (nothing is applied); `INTERNAL` for a reply
    /// whose witness does not decode or does not hold together.
    pub async fn update_safely(
        &mut self,
        tree_id: &str,
        blocks: &[TouchedBlock],
        returns: Returns,
        old_root: Digest,
    ) -> Result<UpdateResult, Status> {
        let packed = codec::encode_blocks(blocks).map_err(bad_request)?;
        let mut attempt = 1;
        loop {
            match self
                .send_update(tree_id, packed.clone(), returns, Some(old_root))
                .await
            {
                Err(s) if attempt < UPDATE_ATTEMPTS && reply_may_be_lost(&s) => {
                    tracing::warn!(tree_id, attempt, code = ?s.code(), "UpdateBlocks reply lost ({}); sending the batch again", s.message());
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    async fn send_update(
        &mut self,
        tree_id: &str,
        packed: proto::TouchedBlocks,
        returns: Returns,
        expected_old_root: Option<Digest>,
    ) -> Result<UpdateResult, Status> {
        let r = self
            .inner
            .update_blocks(proto::UpdateBlocksRequest {
                tree_id: tree_id.into(),
                blocks: Some(packed),
                return_openings: returns.openings,
                expected_old_root: expected_old_root.as_ref().map(codec::digest_to_proto),
                return_witness: returns.witness,
            })
            .await?
            .into_inner();
        let old_root =
            codec::digest_from_proto(r.old_root.as_ref(), "old_root").map_err(bad_response)?;
        let new_root =
            codec::digest_from_proto(r.new_root.as_ref(), "new_root").map_err(bad_response)?;
        let witness = match (returns.witness, &r.witness) {
            (false, _) => Vec::new(),
            (true, None) => return Err(bad_response(Error::invalid("witness", "missing"))),
            (true, Some(w)) => {
                let rows = codec::witness_from_proto(w, "witness").map_err(bad_response)?;
                // The root's row comes last, at the tree's height H.
                let height = rows.last().map_or(0, |r| r.height);
                check_witness(&rows, height, &old_root, &new_root).map_err(bad_response)?;
                rows
            }
        };
        Ok(UpdateResult {
            old_root,
            new_root,
            openings: openings_from(&r.openings)?,
            already_applied: r.already_applied,
            witness,
        })
    }

    /// The current root.
    ///
    /// # Errors
    /// `NOT_FOUND`, `FAILED_PRECONDITION` (not built).
    pub async fn get_root(&mut self, tree_id: &str) -> Result<Digest, Status> {
        let r = self
            .inner
            .get_root(proto::GetRootRequest {
                tree_id: tree_id.into(),
            })
            .await?
            .into_inner();
        codec::digest_from_proto(r.root.as_ref(), "root").map_err(bad_response)
    }

    /// Openings of `(slot, block)` positions against the current root, in request order.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` (a position outside the layout), `NOT_FOUND`,
    /// `FAILED_PRECONDITION` (not built), `RESOURCE_EXHAUSTED` (response size).
    pub async fn get_openings(
        &mut self,
        tree_id: &str,
        positions: &[(u32, u64)],
    ) -> Result<Vec<Opening>, Status> {
        let packed = codec::encode_positions(positions).map_err(bad_request)?;
        let r = self
            .inner
            .get_openings(proto::GetOpeningsRequest {
                tree_id: tree_id.into(),
                positions: Some(packed),
            })
            .await?
            .into_inner();
        openings_from(&r.openings)
    }

    /// Drops the tree and releases its memory.
    ///
    /// # Errors
    /// `NOT_FOUND`.
    pub async fn drop_tree(&mut self, tree_id: &str) -> Result<(), Status> {
        self.inner
            .drop_tree(proto::DropTreeRequest {
                tree_id: tree_id.into(),
            })
            .await?;
        Ok(())
    }

    /// Every tree on the server, ordered by id.
    ///
    /// # Errors
    /// Transport errors only.
    pub async fn list_trees(&mut self) -> Result<Vec<proto::TreeInfo>, Status> {
        Ok(self
            .inner
            .list_trees(proto::ListTreesRequest {})
            .await?
            .into_inner()
            .trees)
    }

    /// The server's backend, device, limits, trees and memory totals.
    ///
    /// # Errors
    /// Transport errors only.
    pub async fn server_info(&mut self) -> Result<proto::GetServerInfoResponse, Status> {
        Ok(self
            .inner
            .get_server_info(proto::GetServerInfoRequest {})
            .await?
            .into_inner())
    }
}
