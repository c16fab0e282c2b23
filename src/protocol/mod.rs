//! RESP, spoken one way everywhere: what clients send the proxy and what the
//! proxy sends Redis ([`request`]), what the proxy answers clients (`reply`,
//! encoded with `redis-protocol`), and what Redis answers the proxy
//! (`Frame`, cut where it ends and relayed as it came; `Value` for the few
//! replies the proxy reads).
//!
//! Both the front-end (`resp`) and the connection layer (`backend`) use this
//! module, and it uses neither. Only the request decoder is public (for the
//! fuzz target).

pub(crate) mod combine;
mod frame;
mod name;
mod reply;
pub mod request;
mod value;

pub use request::{Decoder, ProtocolError};

pub(crate) use combine::Combine;
pub(crate) use frame::{Frame, Kind, bulk_end, element, line, take};
pub(crate) use name::Name;
pub(crate) use reply::{Protocol, Reply, Sink};
pub(crate) use request::{encode, encoded};
pub(crate) use value::Value;
