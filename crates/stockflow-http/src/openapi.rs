//! The OpenAPI document, generated from the handlers' annotations and the
//! types they read and answer: each operation is described beside its
//! handler, each shape by the type that parses or renders it, and the
//! refusals that any read or write may meet once, here.
//!
//! Answers a handler still renders as a JSON value are described by
//! schema types in `shapes`; the contract test holds every answer it gets
//! to its schema, in both modes.
//!
//! [`super::operations`] is what the router serves and `Api`'s `paths`
//! what is described; `the_document_describes_exactly_the_operations_the_router_serves`
//! (tests/it/http.rs) holds the two lists to each other, so an operation
//! cannot be routed and not described, or described and not routed.

use std::collections::HashMap;
use std::sync::OnceLock;

use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{IntoResponses, OpenApi, PartialSchema, ToSchema};

use super::error::ErrorBody;

/// What an id (an eventId, sku, locationId or orderId) may be: at least
/// one character that is not white space, and none that is a control
/// character or a bidirectional-text control (see
/// `stockflow_core::parse::check_id`).
pub(crate) const ID_PATTERN: &str = r"^[^\u0000-\u001F\u007F-\u009F\u202A-\u202E\u2066-\u2069]*[^\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202A-\u202F\u205F\u2066-\u2069\u3000][^\u0000-\u001F\u007F-\u009F\u202A-\u202E\u2066-\u2069]*$";

/// An id as the API takes it: 1 to 128 characters of [`ID_PATTERN`].
/// (Written by hand: the derive takes a pattern only as a literal, and the
/// pattern is written once, here.)
pub(crate) struct Id;

/// An orderId: an id of at most 100 characters, leaving room for the ids
/// of the events its lines become.
pub(crate) struct OrderId;

fn id_schema(chars_max: usize, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(chars_max))
        .pattern(Some(ID_PATTERN))
        .description(Some(description))
        .into()
}

impl PartialSchema for Id {
    fn schema() -> RefOr<Schema> {
        id_schema(
            stockflow_core::limits::ID_CHARS_MAX,
            "1 to 128 characters, not only white space, none of them a control character or a bidirectional-text control.",
        )
    }
}

impl ToSchema for Id {}

impl PartialSchema for OrderId {
    fn schema() -> RefOr<Schema> {
        id_schema(
            super::orders::ORDER_ID_CHARS_MAX,
            "1 to 100 characters (room for the ids of its lines' events), not only white space, none of them a control character or a bidirectional-text control.",
        )
    }
}

impl ToSchema for OrderId {}

/// The refusals any read may answer besides its own.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub(crate) enum ReadRefusals<'a> {
    /// A parameter is not what this operation takes; the message says which.
    #[response(status = 400)]
    BadRequest(ErrorBody<'a>),
    /// Kafka mode: the instance that owns this data did not answer; retry
    /// shortly.
    #[response(status = 502)]
    BadGateway(ErrorBody<'a>),
    /// Not ready (recovering; in Kafka mode, a partition this answer needs
    /// is restoring or has no owner right now) or shutting down; retry
    /// shortly (see Retry-After).
    #[response(status = 503)]
    Unavailable(ErrorBody<'a>),
}

/// The refusals any write may answer besides its own.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub(crate) enum WriteRefusals<'a> {
    /// A parameter or the body is not what this operation takes; the
    /// message says which.
    #[response(status = 400)]
    BadRequest(ErrorBody<'a>),
    /// The body did not arrive within the read timeout.
    #[response(status = 408)]
    Timeout(ErrorBody<'a>),
    /// The body is larger than the server takes (--body-limit-bytes), or
    /// holds too many items.
    #[response(status = 413)]
    TooLarge(ErrorBody<'a>),
    /// Content-Type is not one of application/json, application/x-ndjson,
    /// text/csv (a write must say what it carries, even an empty one), or
    /// the body is compressed.
    #[response(status = 415)]
    Unsupported(ErrorBody<'a>),
    /// The write queue is full, or the server is not ready or shutting
    /// down; see Retry-After.
    #[response(status = 503)]
    Unavailable(ErrorBody<'a>),
    /// The data directory's disk is short of space (code `disk_full`):
    /// writes are refused until space is freed, then resume by themselves;
    /// reads go on. See Retry-After.
    #[response(status = 507)]
    DiskFull(ErrorBody<'a>),
}

/// One item or an array of them. Each is checked on its own: one refused
/// is listed in the receipt's errors and kept as a dead letter, and the
/// others are taken.
#[derive(serde::Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(crate) enum Batch {
    One(HashMap<String, serde_json::Value>),
    Many(Vec<serde_json::Value>),
}

/// Source messages: one object or an array of them.
#[derive(serde::Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(crate) enum SourceBatch {
    One(HashMap<String, serde_json::Value>),
    Many(Vec<HashMap<String, serde_json::Value>>),
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "stockflow",
        version = "1",
        description = "Real-time inventory: ingest stock events exactly once, query per SKU-location state."
    ),
    paths(
        super::ingest::post_events,
        super::ingest::post_source_events,
        super::query::sources,
        super::catalog::list_products,
        super::catalog::post_products,
        super::catalog::get_product,
        super::catalog::put_product,
        super::catalog::list_locations,
        super::catalog::post_locations,
        super::catalog::get_location,
        super::catalog::put_location,
        super::catalog::item,
        super::catalog::region_stock,
        super::orders::place,
        super::orders::list,
        super::orders::get,
        super::orders::fulfil,
        super::orders::cancel,
        super::orders::extend,
        super::query::level,
        super::query::sku,
        super::history::history,
        super::query::location,
        super::dead_letters::list,
        super::dead_letters::discard,
        super::dead_letters::replay,
        super::check::check,
        super::cluster,
        super::alerts::list,
        super::alerts::acknowledge,
        super::alerts::mutes,
        super::alerts::mute,
        super::alerts::unmute,
        super::session::get,
        super::session::stream_cookie,
        super::session::end_stream_cookie,
        super::stream::stream,
        super::dashboard::activity,
        super::dashboard::status,
        super::dashboard::start,
        super::dashboard::stop,
        super::dashboard::send,
        super::dashboard::scenario,
        super::openapi,
        super::ui::index,
        super::healthz,
        super::ready,
        super::links,
        super::sinks,
        super::metrics,
    ),
    components(schemas(
        super::shapes::Event,
        super::catalog::ProductInput,
        super::catalog::LocationInput
    ))
)]
struct Api;

/// The document as served at /v1/openapi.json: by a server with an auth
/// file (`secured`), with who may call each operation; by one without,
/// every operation open, as it is.
pub fn document(secured: bool) -> &'static str {
    static OPEN: OnceLock<String> = OnceLock::new();
    static SECURED: OnceLock<String> = OnceLock::new();
    let render = || {
        let mut doc = serde_json::to_value(Api::openapi()).expect("the document serializes");
        if secured {
            with_access(&mut doc);
        }
        serde_json::to_string_pretty(&doc).expect("the document serializes")
    };
    if secured {
        SECURED.get_or_init(render)
    } else {
        OPEN.get_or_init(render)
    }
}

/// Adds who may call each operation, from [`super::auth::access`]: the
/// bearer scheme, each operation's requirement and role, and the 401 and
/// 403 a server with an auth file answers.
fn with_access(doc: &mut serde_json::Value) {
    use serde_json::json;
    doc["components"]["securitySchemes"]["bearer"] = json!({
        "type": "http",
        "scheme": "bearer",
        "description": "A token's secret (`stockflow token create`), on a server started with --auth-file; without one every operation is open."
    });
    let refusal = |text: &str| json!({"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let paths = doc["paths"].as_object_mut().expect("paths");
    for (path, item) in paths.iter_mut() {
        for (method, operation) in item.as_object_mut().expect("a path item").iter_mut() {
            let Ok(method) = method.to_uppercase().parse::<axum::http::Method>() else {
                continue;
            };
            let needs = match super::auth::access(&method, path) {
                super::auth::Access::Open => {
                    operation["security"] = json!([]);
                    continue;
                }
                super::auth::Access::AnyToken => "Needs a token (any role).".to_owned(),
                super::auth::Access::Cluster => "Only other instances of the cluster.".to_owned(),
                super::auth::Access::Needs(role) => {
                    format!("Needs a token with the role `{}`.", role.as_str())
                }
            };
            operation["security"] = json!([{"bearer": []}]);
            let description = match operation["description"].as_str() {
                Some(text) => format!("{text}\n\n{needs}"),
                None => needs,
            };
            operation["description"] = json!(description);
            let responses = &mut operation["responses"];
            responses["401"] =
                refusal("No token, or one the server does not know (see WWW-Authenticate).");
            if responses.get("403").is_none() {
                responses["403"] = refusal("The token lacks the role this operation needs.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    fn document() -> Value {
        serde_json::from_str(super::document(false)).unwrap()
    }

    fn body_property(doc: &Value, schema: &str, property: &str) -> Value {
        doc["components"]["schemas"][schema]["properties"][property].clone()
    }

    /// The limits the annotations spell as numbers (the derive takes only
    /// literals) are the limits the server enforces.
    #[test]
    fn the_documented_limits_are_the_servers() {
        let doc = document();
        let hold = stockflow_core::limits::HOLD_SECONDS_MAX;
        for (schema, property, max) in [
            ("OrderRequest", "holdSeconds", hold),
            ("ExtendRequest", "holdSeconds", hold),
            ("Event", "holdSeconds", hold),
            (
                "OrderLineRequest",
                "quantity",
                stockflow_core::limits::QUANTITY_ABS_MAX as u64,
            ),
            (
                "SimulatorStart",
                "rate",
                u64::from(crate::simulator::RATE_MAX),
            ),
            (
                "SimulatorSend",
                "count",
                u64::from(crate::simulator::SEND_MAX),
            ),
        ] {
            assert_eq!(
                body_property(&doc, schema, property)["maximum"],
                max,
                "{schema}.{property}"
            );
        }
        for (name, max) in [
            ("seconds", stockflow_service::activity::SECONDS_KEPT as u64),
            (
                "staleAfterSeconds",
                crate::dashboard::STALE_AFTER_SECONDS_MAX,
            ),
        ] {
            let parameters = doc["paths"]["/v1/activity"]["get"]["parameters"].clone();
            let parameter = parameters
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap()
                .clone();
            assert_eq!(parameter["schema"]["maximum"], max, "{name}");
        }
        let quantity = stockflow_core::limits::QUANTITY_ABS_MAX;
        for (schema, property) in [
            ("ProductInput", "lowStockThreshold"),
            ("ProductInput", "safetyStock"),
            ("LocationInput", "lowStockThreshold"),
        ] {
            assert_eq!(
                body_property(&doc, schema, property)["maximum"],
                quantity,
                "{schema}.{property}"
            );
        }
        let id = &doc["components"]["schemas"]["Id"];
        assert_eq!(id["maxLength"], stockflow_core::limits::ID_CHARS_MAX);
        let lines = body_property(&doc, "OrderRequest", "lines");
        assert_eq!(lines["maxItems"], crate::orders::ORDER_LINES_MAX);
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for parameter in operation["parameters"].as_array().into_iter().flatten() {
                    if parameter["name"] == "limit" {
                        assert_eq!(
                            parameter["schema"]["maximum"],
                            crate::query::PAGE_MAX,
                            "{method} {path}"
                        );
                    }
                }
            }
        }
    }

    /// Clients name their functions after operationIds: each is unique,
    /// and every operation has one and a tag to be grouped by.
    #[test]
    fn every_operation_has_its_own_id_and_a_tag() {
        let doc = document();
        let mut ids = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let id = operation["operationId"].as_str().unwrap_or_default();
                assert!(!id.is_empty(), "{method} {path} has no operationId");
                assert!(ids.insert(id.to_owned()), "{id} is used twice");
                assert_eq!(
                    operation["tags"].as_array().map(Vec::len),
                    Some(1),
                    "{method} {path}"
                );
            }
        }
    }
}
