//! The gRPC definitions of bandvote, generated from `proto/`.
//!
//! * [`v1`]: `bandvote.v1.Votes`, the versioned vote service (unary `Cast`, client-streaming
//!   `CastBatch`).
//! * [`confproto`]: the original course service `confproto.getInfo/returnInfo`, kept as it was so
//!   that clients generated from the course's proto keep working.

#![allow(missing_docs, clippy::all)]

pub mod v1 {
    tonic::include_proto!("bandvote.v1");
}

pub mod confproto {
    tonic::include_proto!("confproto");
}

/// The encoded descriptors of both services, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("bandvote_descriptor");
