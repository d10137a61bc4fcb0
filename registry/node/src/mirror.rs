//! Wiring of the pull-through cache and the torrent endpoint into the registry.

use std::sync::Arc;

use anyhow::Result;
use berth_registry::Registry;

use crate::config::NodeConfig;
use crate::upstream::Upstreams;

/// Installs the configured upstreams (if any) as the registry's content source; with a
/// peer layer, the source is peers first, then the upstreams (see `crate::p2p`).
pub fn wire(
    registry: Registry,
    config: &NodeConfig,
    p2p: Option<Arc<crate::p2p::P2p>>,
) -> Result<Registry> {
    let upstreams = Upstreams::new(&config.upstream, config.upstream_ca_file.as_deref())?;
    let registry = registry.with_torrent_announce(config.torrent_announce.clone());
    if let Some(p2p) = p2p {
        let stats = p2p.stats.clone();
        registry
            .metrics()
            .set_extra(Box::new(move |out: &mut String| stats.render(out)));
        let upstream = (!upstreams.is_empty()).then(|| Arc::new(upstreams));
        let source = Arc::new(crate::p2p::PeerSource::new(p2p, upstream));
        return Ok(registry.with_content_source(Arc::new(crate::p2p::Chain(source))));
    }
    if upstreams.is_empty() {
        return Ok(registry);
    }
    for u in &config.upstream {
        tracing::info!(host = u.host.as_deref().unwrap_or("(default)"), url = %u.url.split('@').next_back().unwrap_or(""), "pulling through upstream");
    }
    let source: Arc<dyn berth_registry::source::ContentSource> = Arc::new(upstreams);
    let source = match crate::p2p::limiter(config.p2p.rate_limit_mbps) {
        Some(l) => Arc::new(crate::p2p::Throttled(source, l)),
        None => source,
    };
    Ok(registry.with_content_source(source))
}
