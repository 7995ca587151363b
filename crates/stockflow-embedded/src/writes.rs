//! How the embedded engine takes writes: catalog changes, order commands,
//! dead-letter replays and discards all go through its pipeline (the
//! log), like events.

use axum::http::StatusCode;
use serde_json::Value;
use stockflow_core::orders::{Answer, OrderCommand, Status};
use stockflow_core::{Parsed, Rejected};

use super::Embedded;
use stockflow_http::asks::CatalogItem;
use stockflow_http::asks::{Letter, LetterFilter as Filter};
use stockflow_http::dead_letters::{
    format_of, letter_json, source_matches, PAGE_PAYLOAD_BYTES_MAX,
};
use stockflow_http::ApiError;
use stockflow_service::json::order_json;
use stockflow_service::receipt::Receipt;

/// The embedded engine commits catalog changes (and keeps the refused
/// ones) through its log and answers once they are applied.
pub(crate) async fn write_here(
    state: &Embedded,
    items: Vec<CatalogItem>,
    rejected: Vec<Rejected>,
    source: &str,
) -> Result<Receipt, ApiError> {
    let changes = items.into_iter().map(|item| item.change).collect();
    Ok(state
        .pipeline
        .submit_catalog(changes, rejected, source)?
        .await?)
}

/// The embedded engine's orders after `after` (see [`Backend::orders`]).
pub(crate) fn orders_here(
    state: &Embedded,
    status: Option<Status>,
    after: Option<&str>,
    limit: usize,
) -> Vec<Value> {
    let book = state.pipeline.shared.orders.read();
    let start = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
    book.orders
        .range::<str, _>((start, std::ops::Bound::Unbounded))
        .map(|(_, o)| o)
        .filter(|o| status.is_none_or(|s| o.status == s))
        .take(limit + 1)
        .map(order_json)
        .collect()
}

/// The embedded engine decides an order command in its pipeline.
pub(crate) async fn command_here(
    state: &Embedded,
    command: OrderCommand,
) -> Result<Answer, ApiError> {
    let receipt = state.pipeline.submit_order(command)?.await?;
    receipt.order.ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the order step gave no answer",
        )
    })
}

/// The embedded engine's page of unresolved letters after `after`, and
/// the id the next page starts after (if more match).
pub(crate) fn list_here(
    state: &Embedded,
    filter: &Filter,
    after: Option<u64>,
    limit: usize,
) -> (Vec<Value>, Option<u64>) {
    let reason = filter.reason.as_deref().map(str::to_lowercase);
    let (letters, more) =
        state
            .pipeline
            .shared
            .dead_letters
            .read()
            .page(after, limit, PAGE_PAYLOAD_BYTES_MAX, |l| {
                filter
                    .source
                    .as_deref()
                    .is_none_or(|s| source_matches(&l.source, s))
                    && reason
                        .as_deref()
                        .is_none_or(|r| l.reason.to_lowercase().contains(r))
            });
    let next = if more {
        letters.last().map(|l| l.id)
    } else {
        None
    };
    (letters.iter().map(letter_json).collect(), next)
}

/// The embedded engine's unresolved letter `id`.
pub(crate) fn find_here(state: &Embedded, id: u64) -> Option<Letter> {
    let letters = state.pipeline.shared.dead_letters.read();
    let letter = letters.get(id)?;
    Some(Letter {
        source: letter.source.clone(),
        format: format_of(&letter.source).map(str::to_owned),
        payload: letter.payload.clone(),
    })
}

/// The embedded engine replays through its log: the events or changes
/// and the letter's resolution (if nothing is refused again) in one
/// record.
pub(crate) async fn replay_here(
    state: &Embedded,
    id: u64,
    letter: &Letter,
    parsed: Parsed,
    changes: Vec<CatalogItem>,
    by: &str,
) -> Result<Receipt, ApiError> {
    let changes = changes.into_iter().map(|c| c.change).collect();
    Ok(state
        .pipeline
        .submit_replay(parsed, changes, id, &letter.source, by)?
        .await?)
}

/// The embedded engine discards a letter through its log.
pub(crate) async fn discard_here(state: &Embedded, id: u64, by: &str) -> Result<(), ApiError> {
    state.pipeline.discard_dead_letter(id, by)?.await?;
    Ok(())
}
