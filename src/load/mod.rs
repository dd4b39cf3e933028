//! `oneloop load`: a closed-loop load generator that verifies every reply.
//!
//! A load generator that only counts bytes measures a server that might be answering wrongly;
//! this one checks each reply against the request it answers ([`verify`]).

pub mod verify;
