//! `list`: catalog and tags/list walks. Setup creates `count` repositories with `tags` tags
//! each (one tiny image per repo, tagged many times). Steps alternate a full catalog walk and
//! a tags walk of one repo, `n = page_size`, following `Link: <...>; rel="next"` until it is
//! absent (at most `LIST_PAGES_MAX` pages). A walk that misses any of our repos or tags is a
//! `protocol` error: pagination that loses entries is a bug worth counting.

use super::{all_ok, bounded, clone_err, ensure_image, ids};
use crate::client::Client;
use crate::config::RunConfig;
use crate::data::{derive_key, Image, ImageShape};
use crate::error::ReqError;
use crate::oci::{pull_scope, CATALOG_SCOPE, LIST_PAGES_MAX};
use crate::stats::{OpKind, Recorder};
use std::collections::BTreeSet;
use std::time::Instant;

/// Tiny layers: listing load is about names, not bytes.
const LIST_LAYER_BYTES: u64 = 1024;

/// Prepared listing workload.
pub struct List {
    repos: Vec<String>,
    tags: BTreeSet<String>,
    page_size: u32,
}

impl List {
    /// Creates the repositories and tags.
    pub async fn setup(cfg: &RunConfig, client: &Client) -> Result<List, ReqError> {
        let shape = ImageShape {
            layers: 1,
            layer_size: LIST_LAYER_BYTES,
        };
        let image = Image::build(derive_key(cfg.seed, &[ids::LIST]), shape);
        let repos: Vec<String> = (0..cfg.count().unwrap_or(1))
            .map(|i| format!("{}/list-s{}-{i:05}", cfg.repo_prefix, cfg.seed))
            .collect();
        let tags: BTreeSet<String> = (0..cfg.tags).map(|t| format!("t{t:05}")).collect();
        let setups = repos
            .iter()
            .map(|repo| async {
                let first = tags.first().map(String::as_str).unwrap_or("t0");
                ensure_image(client, repo, first, &image).await?;
                for t in tags.iter().skip(1) {
                    client.put_manifest(repo, t, &image.manifest).await?;
                }
                Ok::<(), ReqError>(())
            })
            .collect();
        all_ok(bounded(setups, 4).await)?;
        Ok(List {
            repos,
            tags,
            page_size: cfg.page_size,
        })
    }

    /// One catalog walk (even `seq`) or one tags walk (odd `seq`).
    pub async fn step(&self, client: &Client, seq: u64, rec: &mut Recorder) {
        let t = Instant::now();
        if seq % 2 == 0 {
            let url = format!("/v2/_catalog?n={}", self.page_size);
            let r = walk(
                client,
                &url,
                CATALOG_SCOPE,
                "repositories",
                OpKind::CatalogPage,
                rec,
            )
            .await
            .and_then(|(names, bytes)| {
                let missing = self.repos.iter().filter(|r| !names.contains(*r)).count();
                check(missing, "catalog", bytes)
            });
            rec.record(OpKind::CatalogWalk, t, &r);
        } else {
            let Some(repo) = self
                .repos
                .get(((seq / 2) % self.repos.len() as u64) as usize)
            else {
                return;
            };
            let url = format!("/v2/{repo}/tags/list?n={}", self.page_size);
            let r = walk(
                client,
                &url,
                &pull_scope(repo),
                "tags",
                OpKind::TagsPage,
                rec,
            )
            .await
            .and_then(|(names, bytes)| {
                let missing = self.tags.symmetric_difference(&names).count();
                check(missing, "tags", bytes)
            });
            rec.record(OpKind::TagsWalk, t, &r);
        }
    }
}

fn check(missing: usize, what: &str, bytes: u64) -> Result<u64, ReqError> {
    if missing == 0 {
        Ok(bytes)
    } else {
        Err(ReqError::protocol(format!(
            "{what} walk: {missing} entries lost or unexpected"
        )))
    }
}

/// Follows pages from `url`, collecting the string array `field`. Returns names and the
/// JSON bytes received.
async fn walk(
    client: &Client,
    url: &str,
    scope: &str,
    field: &str,
    page_op: OpKind,
    rec: &mut Recorder,
) -> Result<(BTreeSet<String>, u64), ReqError> {
    let mut names = BTreeSet::new();
    let mut next = Some(url.to_owned());
    let mut bytes = 0;
    for _ in 0..LIST_PAGES_MAX {
        let Some(u) = next.take() else {
            return Ok((names, bytes));
        };
        let t = Instant::now();
        let r = client.list_page(&u, scope).await;
        rec.record(
            page_op,
            t,
            &r.as_ref().map(|(_, _, len)| *len).map_err(clone_err),
        );
        let (json, link, len) = r?;
        bytes += len;
        let page = json
            .get(field)
            .and_then(|v| v.as_array())
            .map(Vec::as_slice)
            .unwrap_or_default();
        for n in page.iter().filter_map(|v| v.as_str()) {
            names.insert(n.to_owned());
        }
        next = link;
    }
    Err(ReqError::protocol(format!(
        "listing {url}: over {LIST_PAGES_MAX} pages"
    )))
}
