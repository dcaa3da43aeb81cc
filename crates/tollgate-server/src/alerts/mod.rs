//! Budget alerts, from the settlement that sets one off to its delivery:
//!
//! - [`raise`]: turns the alerts a settlement returns into durable outbox
//!   entries, described from the snapshot (the limit's name, workspace,
//!   unit, threshold and extra recipients).
//! - [`delivery`]: the [`Dispatcher`] that delivers outbox entries by email
//!   (SMTP) and a signed webhook, retrying each channel on its own.

pub mod delivery;
pub mod raise;

pub use delivery::{
    render_email, sender, verify_webhook_signature, webhook_signature, AlertConfig, AlertError, AlertHandle, AlertKind,
    AlertPayload, Channel, DeliveryReport, Dispatcher, ALERT_RETRY_EVERY, EVENT_ID_HEADER, SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
};
pub use raise::{enqueue, payload};
