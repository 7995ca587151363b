//! The catalog topic, read whole by every instance: into the shared
//! catalog and every owned partition's rules, with the alerts a change
//! raises (thresholds, PRICE_DROP) published like any other.

use super::*;

/// The catalog topic's reader: its one partition, from the start.
pub(super) fn catalog_reader(settings: &KafkaSettings) -> anyhow::Result<BaseConsumer> {
    let reader: BaseConsumer = settings
        .client(&[
            ("enable.auto.commit", "false"),
            ("group.id", &format!("{}-catalog", settings.group)),
            ("fetch.wait.max.ms", "50"),
        ])
        .create()?;
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(&settings.topics.catalog, 0, Offset::Beginning)?;
    reader.assign(&list)?;
    Ok(reader)
}

/// Reads the catalog topic to its end into `shared.catalog` (a missing or
/// unreadable topic leaves it empty: the catalog is then built as it comes).
pub(super) fn load_catalog(reader: &BaseConsumer, settings: &KafkaSettings, shared: &Shared) {
    let topic = &settings.topics.catalog;
    let Ok((low, high)) = reader.fetch_watermarks(topic, 0, Duration::from_secs(30)) else {
        tracing::warn!(%topic, "catalog topic not readable; starting with an empty catalog");
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut next = low;
    let mut catalog = shared.catalog.write();
    while next < high && Instant::now() < deadline {
        let Some(message) = reader.poll(RESTORE_QUIET) else {
            continue;
        };
        let Ok(m) = message else { continue };
        next = m.offset() + 1;
        if let Ok(Some(change)) = catalog_change(&m) {
            catalog.apply(&change, from_millis(m.timestamp().to_millis().unwrap_or(0)));
        }
    }
    shared.catalog_applied.store(next, Ordering::Release);
    tracing::info!(
        products = catalog.products.len(),
        locations = catalog.locations.len(),
        "catalog loaded"
    );
}

/// The catalog topic's key prefixes of acknowledgements (then the id of
/// the level and kind: one record per level and kind is kept) and mutes
/// (then the mute's id).
pub const ACKNOWLEDGEMENT: &str = "alert-ack:";
pub const MUTE: &str = "alert-mute:";

/// A catalog-topic record: key `product:{sku}`, `location:{id}`,
/// `alert-ack:{scope}` or `alert-mute:{id}`, value the API's JSON for it.
/// `Ok(None)` for a tombstone.
pub fn catalog_change<M: Message>(m: &M) -> Result<Option<stockflow_core::CatalogChange>, String> {
    let Some(payload) = m.payload() else {
        return Ok(None);
    };
    let key = m
        .key()
        .and_then(|k| std::str::from_utf8(k).ok())
        .unwrap_or("");
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    if let Some(sku) = key.strip_prefix("product:") {
        stockflow_core::catalog::parse_product(&value, Some(sku))
            .map(|p| Some(stockflow_core::CatalogChange::Product(p)))
    } else if let Some(id) = key.strip_prefix("location:") {
        stockflow_core::catalog::parse_location(&value, Some(id))
            .map(|l| Some(stockflow_core::CatalogChange::Location(l)))
    } else if key.starts_with(ACKNOWLEDGEMENT) {
        stockflow_core::marks::parse_acknowledgement(&value)
            .map(|a| Some(stockflow_core::CatalogChange::Acknowledge(a)))
    } else if let Some(id) = key.strip_prefix(MUTE) {
        stockflow_core::marks::parse_mute(&value, Some(id))
            .map(|m| Some(stockflow_core::CatalogChange::Mute(m)))
    } else {
        Err(format!(
            "key {key:?}: a catalog record's key is product:{{sku}}, location:{{locationId}}, {ACKNOWLEDGEMENT}{{scope}} or {MUTE}{{id}}"
        ))
    }
}

impl Processor {
    /// Applies what the catalog topic has gained since the last cycle: to
    /// the shared catalog and to every owned partition (roll-up groups,
    /// alert thresholds; alerts the new rules raise or clear are published
    /// like any other).
    pub(super) fn read_catalog(&mut self) {
        let mut changes = Vec::new();
        while let Some(message) = self.catalog_reader.poll(Duration::ZERO) {
            match message {
                Ok(m) => {
                    match catalog_change(&m) {
                        Ok(Some(change)) => {
                            changes.push((change, m.timestamp().to_millis().unwrap_or(0)))
                        }
                        Ok(None) => {}
                        Err(reason) => self.dead_letter(
                            &self.settings.topics.catalog,
                            0,
                            m.offset(),
                            m.payload().unwrap_or_default(),
                            &reason,
                        ),
                    }
                    self.shared
                        .catalog_applied
                        .store(m.offset() + 1, Ordering::Release);
                }
                Err(error) => {
                    tracing::warn!(%error, "reading the catalog topic");
                    break;
                }
            }
        }
        if changes.is_empty() {
            return;
        }
        let prices: Vec<PriceChange> = {
            let mut catalog = self.shared.catalog.write();
            changes
                .iter()
                .filter_map(|(change, ms)| catalog.apply(change, from_millis(*ms)))
                .collect()
        };
        let mut told = self.publish_price_drops(&prices);
        let owned: Vec<u16> = self.owned.keys().copied().collect();
        for p in owned {
            let mut partition = self.shared.partitions[p as usize].write();
            let alerts_before = partition.alerts.next_seq;
            for (change, ms) in &changes {
                partition.apply_catalog(change, from_millis(*ms));
            }
            told += (partition.alerts.next_seq - alerts_before) as usize;
            self.publish_alerts(p, &partition, alerts_before);
            drop(partition);
            let moved = self.totals_moved(p, &changes);
            told += moved.skus.len() + moved.locations.len();
            self.publish_totals(p, &moved);
        }
        if told > 0 && self.settings.transactions {
            // Visible only once committed; there may be no cycle to do it.
            self.commit_transaction(None, &[]);
        }
        self.shared.progress.notify_waiters();
    }

    /// The totals homed in `p` that catalog changes move: a product's
    /// safety stock and threshold move its SKU's totals and those of the
    /// locations it is at; a location's threshold, its own and those of
    /// the SKUs there.
    fn totals_moved(
        &self,
        p: u16,
        changes: &[(stockflow_core::CatalogChange, i64)],
    ) -> super::sagas::Moved {
        use stockflow_core::CatalogChange;
        let n = self.settings.partitions;
        let book = self.shared.rollups[p as usize].read();
        let mut moved = super::sagas::Moved::default();
        for (change, _) in changes {
            match change {
                CatalogChange::Product(product) => {
                    let sku = &product.sku;
                    if sku_home(sku, n) == p && book.levels(sku).next().is_some() {
                        moved.skus.insert(sku.clone());
                    }
                    moved.locations.extend(book.locations_of(sku));
                }
                CatalogChange::Location(location) => {
                    let id = &location.location_id;
                    if location_home(id, n) == p {
                        moved.locations.insert(id.clone());
                    }
                    moved.skus.extend(book.skus_at(id));
                }
                CatalogChange::Acknowledge(_) | CatalogChange::Mute(_) => {}
            }
        }
        moved
    }

    /// Queues the PRICE_DROP alerts among `prices`: each one by the owner
    /// of its SKU's home partition (every instance reads the catalog, one
    /// tells), to the alerts topic's partition of that home.
    /// Returns how many.
    pub(super) fn publish_price_drops(&self, prices: &[PriceChange]) -> usize {
        let n = self.settings.partitions;
        let percent = self.settings.price_drop_percent;
        let mut told = 0;
        for change in prices.iter().filter(|c| c.is_drop(percent)) {
            let home = sku_home(&change.sku, n);
            if !self.owned.contains_key(&home) {
                continue;
            }
            told += 1;
            let json = stockflow_service::json::price_drop_json(change).to_string();
            self.send(
                BaseRecord::to(&self.settings.topics.alerts)
                    .partition(i32::from(home))
                    .key(&change.sku)
                    .payload(&json),
            );
        }
        told
    }
}
