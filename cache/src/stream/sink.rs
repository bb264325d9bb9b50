//! Where a production pass puts its frames: a `Vec<WatchFrame>` (the
//! general API) or gRPC messages written straight into the connection's
//! buffer (the gateway's hot path).

use std::sync::Arc;

use bytes::BytesMut;

use crate::event::CachedEvent;
use crate::frame::{FrameHead, WatchFrame, write_grpc_message};

/// Where a pass puts its frames: `Vec<WatchFrame>` (the general API) or a
/// gRPC byte buffer (the gateway's hot path).
pub(super) trait Sink {
    /// A pre-built frame (created, canceled, progress).
    fn frame(&mut self, f: WatchFrame);
    /// A response carrying `events` (already cut to the frame size).
    fn events(&mut self, head: &FrameHead, events: &[Arc<CachedEvent>], prev_kv: bool);
    /// Frames handed out so far.
    fn frames(&self) -> usize;
}

impl Sink for Vec<WatchFrame> {
    fn frame(&mut self, f: WatchFrame) {
        self.push(f);
    }

    fn events(&mut self, head: &FrameHead, events: &[Arc<CachedEvent>], prev_kv: bool) {
        self.push(WatchFrame::new(head, events.to_vec(), prev_kv));
    }

    fn frames(&self) -> usize {
        self.len()
    }
}

/// Writes gRPC messages straight into the connection's buffer.
pub(super) struct GrpcSink<'a> {
    pub(super) buf: &'a mut BytesMut,
    pub(super) frames: usize,
    /// Reserved at the first write of a pass (about the caller's soft
    /// limit): one allocation of about a chunk, not a doubling series, and
    /// none at all while the stream waits, so an idle stream pins no buffer.
    pub(super) reserve: usize,
}

impl GrpcSink<'_> {
    fn room(&mut self) {
        if self.buf.capacity() == 0 {
            self.buf.reserve(self.reserve);
        }
    }
}

impl Sink for GrpcSink<'_> {
    fn frame(&mut self, f: WatchFrame) {
        self.room();
        f.write_grpc(self.buf);
        self.frames += 1;
    }

    fn events(&mut self, head: &FrameHead, events: &[Arc<CachedEvent>], prev_kv: bool) {
        self.room();
        write_grpc_message(self.buf, head, events, prev_kv);
        self.frames += 1;
    }

    fn frames(&self) -> usize {
        self.frames
    }
}
