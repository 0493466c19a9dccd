//! In-process access to the `MemCommit` handlers for the fuzz targets (`fuzz/`) and the
//! proptest suite (`tests/fuzz_inputs.rs`): the same code the gRPC server runs, minus the
//! transport. Not a stable API.

use tonic::{Request, Status};

use super::limits::Limits;
use super::proto;
use super::proto::mem_commit_server::MemCommit;
use super::server::MemCommitService;
use crate::tree::Backend;

/// One `MemCommit` service with its own trees; each method is the server's handler for
/// the RPC of the same name and returns its response message or the status a client would
/// see.
pub struct Handler {
    service: MemCommitService,
}

impl Handler {
    /// A service with `limits` whose `auto` backend is `cpu` (so that results do not depend
    /// on a GPU being present).
    pub fn new(limits: Limits) -> Self {
        Handler {
            service: MemCommitService::new(limits, Backend::Cpu),
        }
    }

    /// `CreateTree`.
    ///
    /// # Errors
    /// The status the server would return.
    pub async fn create_tree(
        &self,
        req: proto::CreateTreeRequest,
    ) -> Result<proto::CreateTreeResponse, Status> {
        Ok(self
            .service
            .create_tree(Request::new(req))
            .await?
            .into_inner())
    }

    /// `WriteMemory` over a client stream that sends `chunks` in order and ends cleanly.
    ///
    /// # Errors
    /// The status the server would return.
    pub async fn write_memory(
        &self,
        chunks: Vec<proto::WriteMemoryChunk>,
    ) -> Result<proto::WriteMemoryResponse, Status> {
        self.write_memory_stream(chunks.into_iter().map(Ok).collect())
            .await
    }

    /// `WriteMemory` over a client stream that yields `items` in order. An `Err` item is
    /// what tonic's `Streaming` yields when the transport fails, so chunks followed by an
    /// `Err` are a stream cut off part-way (which writes nothing).
    ///
    /// # Errors
    /// The status the server would return; for a cut stream, that is the cut's own status
    /// (or `RESOURCE_EXHAUSTED` for tonic's message-too-large error).
    pub async fn write_memory_stream(
        &self,
        items: Vec<Result<proto::WriteMemoryChunk, Status>>,
    ) -> Result<proto::WriteMemoryResponse, Status> {
        self.service.write_chunks(tokio_stream::iter(items)).await
    }

    /// `BuildTree`.
    ///
    /// # Errors
    /// The status the server would return.
    pub async fn build_tree(
        &self,
        req: proto::BuildTreeRequest,
    ) -> Result<proto::BuildTreeResponse, Status> {
        Ok(self
            .service
            .build_tree(Request::new(req))
            .await?
            .into_inner())
    }

    /// `UpdateBlocks`.
    ///
    /// # Errors
    /// The status the server would return.
    pub async fn update_blocks(
        &self,
        req: proto::UpdateBlocksRequest,
    ) -> Result<proto::UpdateBlocksResponse, Status> {
        Ok(self
            .service
            .update_blocks(Request::new(req))
            .await?
            .into_inner())
    }

    /// `GetRoot`.
    ///
    /// # Errors
    /// The status the server would return.
    pub async fn get_root(
        &self,
        req: proto::GetRootRequest,
    ) -> Result<proto::GetRootResponse, Status> {
        Ok(self.service.get_root(Request::new(req)).await?.into_inner())
    }

    /// `GetOpenings`.
    ///
    /// # Errors
    /// The status the server would return.
    pub async fn get_openings(
        &self,
        req: proto::GetOpeningsRequest,
    ) -> Result<proto::GetOpeningsResponse, Status> {
        Ok(self
            .service
            .get_openings(Request::new(req))
            .await?
            .into_inner())
    }

    /// `DropTree`.
    ///
    /// # Errors
    /// The status the server would return.
    pub async fn drop_tree(
        &self,
        req: proto::DropTreeRequest,
    ) -> Result<proto::DropTreeResponse, Status> {
        Ok(self
            .service
            .drop_tree(Request::new(req))
            .await?
            .into_inner())
    }

    /// `ListTrees`.
    ///
    /// # Errors
    /// The status the server would return.
    pub async fn list_trees(
        &self,
        req: proto::ListTreesRequest,
    ) -> Result<proto::ListTreesResponse, Status> {
        Ok(self
            .service
            .list_trees(Request::new(req))
            .await?
            .into_inner())
    }

    /// `GetServerInfo`.
    ///
    /// # Errors
    /// The status the server would return.
    pub async fn get_server_info(
        &self,
        req: proto::GetServerInfoRequest,
    ) -> Result<proto::GetServerInfoResponse, Status> {
        Ok(self
            .service
            .get_server_info(Request::new(req))
            .await?
            .into_inner())
    }
}
