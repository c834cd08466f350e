//! Chunk codec (being written).
