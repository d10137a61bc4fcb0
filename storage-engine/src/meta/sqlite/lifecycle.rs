//! SQLite side of the tag lifecycle and garbage collection: migrations, quotas, immutable
//! tags, expiry, the time machine, retention and the GC's database half.
//!
//! GC liveness is computed inside the write transaction that deletes, so a manifest `PUT`
//! (also a write transaction: SQLite has one writer) either lands before and is seen, or
//! after and finds the content gone and fails with `MANIFEST_BLOB_UNKNOWN`. Never both.

use berth_oci::{Digest, RepoName, Tag};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::meta::BlobUse;

use super::{
    db_err, now_ms, parse_digest, record_tag_event, repo_id, Collected, GcWindow, MetaError,
    Policy, Scope, SqliteMetadata, TagInfo, TagOptions,
};

/// Adds the lifecycle columns and tables to a database created by an older version.
/// Idempotent: columns are added only when `PRAGMA table_info` lacks them.
pub(super) fn migrate(conn: &Connection) -> Result<(), MetaError> {
    let columns = [
        ("repo_blobs", "touched_ms", "INTEGER"),
        ("tags", "expires_ms", "INTEGER"),
        ("tags", "immutable", "INTEGER NOT NULL DEFAULT 0"),
    ];
    for (table, column, decl) in columns {
        if !has_column(conn, table, column)? {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))
                .map_err(db_err("migrating schema"))?;
        }
    }
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS policies (
            scope TEXT PRIMARY KEY,
            body TEXT NOT NULL,
            updated_ms INTEGER NOT NULL
         ) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS tags_by_expiry ON tags(expires_ms) WHERE expires_ms IS NOT NULL;
         CREATE INDEX IF NOT EXISTS tag_history_by_time ON tag_history(at_ms);",
    )
    .map_err(db_err("migrating schema"))
}

fn has_column(conn: &Connection, table: &str, column: &str) -> Result<bool, MetaError> {
    let names: Vec<String> = conn
        .prepare(&format!("PRAGMA table_info({table})"))
        .and_then(|mut s| s.query_map([], |r| r.get(1))?.collect())
        .map_err(db_err("reading schema"))?;
    Ok(names.iter().any(|n| n == column))
}

// ---- Policies and quotas ----

pub(super) fn policy(conn: &Connection, scope: &Scope) -> Result<Policy, MetaError> {
    let body: Option<String> = conn
        .prepare_cached("SELECT body FROM policies WHERE scope = ?1")
        .and_then(|mut s| s.query_row([scope.key()], |r| r.get(0)).optional())
        .map_err(db_err("reading policy"))?;
    match body {
        None => Ok(Policy::default()),
        Some(b) => serde_json::from_str(&b).map_err(|e| MetaError::Corrupt(e.to_string())),
    }
}

pub(super) fn set_policy(db: &SqliteMetadata, scope: &Scope, p: &Policy) -> Result<(), MetaError> {
    let body = serde_json::to_string(p).map_err(|e| MetaError::Corrupt(e.to_string()))?;
    db.write("storing policy", |tx| {
        tx.prepare_cached(
            "INSERT INTO policies (scope, body, updated_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (scope) DO UPDATE SET body = excluded.body, updated_ms = excluded.updated_ms",
        )
        .and_then(|mut s| s.execute(params![scope.key(), body, now_ms()]))
        .map_err(db_err("storing policy"))?;
        Ok(())
    })
}

/// `WHERE` fragment selecting the repositories of namespace `?1`.
const IN_NAMESPACE: &str = "(r.name = ?1 OR substr(r.name, 1, length(?1) + 1) = ?1 || '/')";

pub(super) fn usage_bytes(conn: &Connection, scope: &Scope) -> Result<u64, MetaError> {
    let (sql, arg) = match scope {
        Scope::Repo(r) => (
            "SELECT coalesce(sum(b.size), 0) FROM repo_blobs b
             JOIN repositories r ON r.id = b.repo_id WHERE r.name = ?1"
                .to_owned(),
            r.as_str().to_owned(),
        ),
        Scope::Namespace(ns) => (
            format!(
                "SELECT coalesce(sum(size), 0) FROM (SELECT b.digest, max(b.size) AS size
                 FROM repo_blobs b JOIN repositories r ON r.id = b.repo_id
                 WHERE {IN_NAMESPACE} GROUP BY b.digest)"
            ),
            ns.clone(),
        ),
    };
    let used: i64 = conn
        .prepare_cached(&sql)
        .and_then(|mut s| s.query_row([arg], |r| r.get(0)))
        .map_err(db_err("computing usage"))?;
    Ok(used.max(0) as u64)
}

/// Refuses a link that would take the repository or its namespace over quota. A blob
/// already linked in the scope costs nothing more (counted once per namespace).
pub(super) fn check_quota(
    tx: &Transaction<'_>,
    repo: &RepoName,
    digest: &Digest,
    size: u64,
) -> Result<(), MetaError> {
    let scopes = [
        Scope::Repo(repo.clone()),
        Scope::Namespace(repo.namespace().to_owned()),
    ];
    for scope in scopes {
        let Some(limit) = policy(tx, &scope)?.quota_bytes else {
            continue;
        };
        let present_sql = match &scope {
            Scope::Repo(_) => "SELECT 1 FROM repo_blobs b JOIN repositories r ON r.id = b.repo_id
                 WHERE r.name = ?1 AND b.digest = ?2"
                .to_owned(),
            Scope::Namespace(_) => format!(
                "SELECT 1 FROM repo_blobs b JOIN repositories r ON r.id = b.repo_id
                 WHERE {IN_NAMESPACE} AND b.digest = ?2"
            ),
        };
        let key = match &scope {
            Scope::Repo(r) => r.as_str().to_owned(),
            Scope::Namespace(ns) => ns.clone(),
        };
        let present = tx
            .prepare_cached(&present_sql)
            .and_then(|mut s| s.exists(params![key, digest.to_string()]))
            .map_err(db_err("checking quota"))?;
        if present {
            continue;
        }
        let used = usage_bytes(tx, &scope)?;
        if used.saturating_add(size) > limit {
            return Err(MetaError::QuotaExceeded {
                scope: scope.describe(),
                used,
                limit,
                needed: size,
            });
        }
    }
    Ok(())
}

// ---- Tags: immutability, expiry, restore, retention ----

/// Fails with `TagImmutable` if the tag carries the immutable flag or matches an immutable
/// pattern of its repository or namespace.
pub(super) fn refuse_if_immutable(
    tx: &Transaction<'_>,
    repo: &RepoName,
    id: i64,
    tag: &str,
) -> Result<(), MetaError> {
    let flagged: bool = tx
        .prepare_cached("SELECT immutable FROM tags WHERE repo_id = ?1 AND name = ?2")
        .and_then(|mut s| s.query_row(params![id, tag], |r| r.get(0)).optional())
        .map_err(db_err("checking tag"))?
        .unwrap_or(false);
    if flagged
        || policy(tx, &Scope::Repo(repo.clone()))?.tag_is_immutable(tag)
        || policy(tx, &Scope::Namespace(repo.namespace().to_owned()))?.tag_is_immutable(tag)
    {
        return Err(MetaError::TagImmutable(tag.to_owned()));
    }
    Ok(())
}

/// A re-push of the digest a tag already points at refreshes its expiry and flag.
pub(super) fn refresh_tag_options(
    tx: &Transaction<'_>,
    id: i64,
    tag: &str,
    o: TagOptions,
) -> Result<(), MetaError> {
    tx.prepare_cached(
        "UPDATE tags SET expires_ms = ?3, immutable = (immutable OR ?4)
         WHERE repo_id = ?1 AND name = ?2",
    )
    .and_then(|mut s| s.execute(params![id, tag, o.expires_ms, o.immutable]))
    .map_err(db_err("updating tag"))?;
    Ok(())
}

fn tag_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, i64, Option<i64>, bool)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn to_info(row: (String, String, i64, Option<i64>, bool)) -> Result<TagInfo, MetaError> {
    let (name, digest, updated_ms, expires_ms, immutable) = row;
    Ok(TagInfo {
        name,
        digest: parse_digest(digest)?,
        updated_ms,
        expires_ms,
        immutable,
    })
}

pub(super) fn tag_info(
    db: &SqliteMetadata,
    repo: &RepoName,
    tag: &Tag,
) -> Result<Option<TagInfo>, MetaError> {
    let row = db.read(|conn| {
        conn.prepare_cached(
            "SELECT t.name, t.digest, t.updated_ms, t.expires_ms, t.immutable FROM tags t
             JOIN repositories r ON r.id = t.repo_id WHERE r.name = ?1 AND t.name = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![repo.as_str(), tag.as_str()], tag_row)
                .optional()
        })
        .map_err(db_err("reading tag"))
    })?;
    row.map(to_info).transpose()
}

pub(super) fn tags_by_age(
    db: &SqliteMetadata,
    repo: &RepoName,
    n: usize,
) -> Result<Vec<TagInfo>, MetaError> {
    let rows: Vec<_> = db.read(|conn| {
        conn.prepare_cached(
            "SELECT t.name, t.digest, t.updated_ms, t.expires_ms, t.immutable FROM tags t
             JOIN repositories r ON r.id = t.repo_id WHERE r.name = ?1
             ORDER BY t.updated_ms DESC, t.name LIMIT ?2",
        )
        .and_then(|mut s| {
            s.query_map(params![repo.as_str(), n as i64], tag_row)?
                .collect()
        })
        .map_err(db_err("listing tags"))
    })?;
    rows.into_iter().map(to_info).collect()
}

pub(super) fn set_tag_expiry(
    db: &SqliteMetadata,
    repo: &RepoName,
    tag: &Tag,
    expires_ms: Option<i64>,
) -> Result<bool, MetaError> {
    db.write("setting tag expiry", |tx| {
        let Some(id) = repo_id(tx, repo)? else {
            return Ok(false);
        };
        let n = tx
            .prepare_cached("UPDATE tags SET expires_ms = ?3 WHERE repo_id = ?1 AND name = ?2")
            .and_then(|mut s| s.execute(params![id, tag.as_str(), expires_ms]))
            .map_err(db_err("setting tag expiry"))?;
        Ok(n > 0)
    })
}

pub(super) fn expire_tags(
    db: &SqliteMetadata,
    now: i64,
    limit: usize,
) -> Result<Vec<(RepoName, String)>, MetaError> {
    db.write("expiring tags", |tx| {
        let rows: Vec<(i64, String, String, String)> = tx
            .prepare_cached(
                "SELECT t.repo_id, r.name, t.name, t.digest FROM tags t
                 JOIN repositories r ON r.id = t.repo_id
                 WHERE t.expires_ms IS NOT NULL AND t.expires_ms <= ?1 LIMIT ?2",
            )
            .and_then(|mut s| {
                s.query_map(params![now, limit as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect()
            })
            .map_err(db_err("expiring tags"))?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, repo, tag, digest) in rows {
            tx.prepare_cached("DELETE FROM tags WHERE repo_id = ?1 AND name = ?2")
                .and_then(|mut s| s.execute(params![id, tag]))
                .map_err(db_err("expiring tags"))?;
            record_tag_event(tx, id, &tag, None, Some(&digest), "expire")?;
            let repo = RepoName::parse(&repo).map_err(|e| MetaError::Corrupt(e.to_string()))?;
            out.push((repo, tag));
        }
        Ok(out)
    })
}

pub(super) fn restore_tag(
    db: &SqliteMetadata,
    repo: &RepoName,
    tag: &Tag,
    digest: &Digest,
    window_start_ms: i64,
) -> Result<(), MetaError> {
    db.write("restoring tag", |tx| {
        let Some(id) = repo_id(tx, repo)? else {
            return Err(MetaError::NotRestorable(format!(
                "repository {repo} is unknown"
            )));
        };
        let d = digest.to_string();
        let in_window = tx
            .prepare_cached(
                "SELECT 1 FROM tag_history WHERE repo_id = ?1 AND tag = ?2 AND at_ms >= ?3
                 AND (digest = ?4 OR previous = ?4)",
            )
            .and_then(|mut s| s.exists(params![id, tag.as_str(), window_start_ms, d]))
            .map_err(db_err("restoring tag"))?;
        let stored = tx
            .prepare_cached("SELECT 1 FROM repo_manifests WHERE repo_id = ?1 AND digest = ?2")
            .and_then(|mut s| s.exists(params![id, d]))
            .map_err(db_err("restoring tag"))?;
        if !in_window || !stored {
            return Err(MetaError::NotRestorable(format!(
                "{digest} is not in the history of tag {tag} within the time-machine window"
            )));
        }
        let current: Option<String> = tx
            .prepare_cached("SELECT digest FROM tags WHERE repo_id = ?1 AND name = ?2")
            .and_then(|mut s| {
                s.query_row(params![id, tag.as_str()], |r| r.get(0))
                    .optional()
            })
            .map_err(db_err("restoring tag"))?;
        if current.as_deref() == Some(d.as_str()) {
            return Ok(());
        }
        if current.is_some() {
            refuse_if_immutable(tx, repo, id, tag.as_str())?;
        }
        tx.prepare_cached(
            "INSERT INTO tags (repo_id, name, digest, updated_ms, expires_ms, immutable)
             VALUES (?1, ?2, ?3, ?4, NULL, 0)
             ON CONFLICT (repo_id, name) DO UPDATE SET digest = excluded.digest,
               updated_ms = excluded.updated_ms, expires_ms = NULL, immutable = 0",
        )
        .and_then(|mut s| s.execute(params![id, tag.as_str(), d, now_ms()]))
        .map_err(db_err("restoring tag"))?;
        record_tag_event(
            tx,
            id,
            tag.as_str(),
            Some(&d),
            current.as_deref(),
            "restore",
        )
    })
}

pub(super) fn prune_tag(
    db: &SqliteMetadata,
    repo: &RepoName,
    tag: &str,
    digest: &Digest,
) -> Result<bool, MetaError> {
    db.write("pruning tag", |tx| {
        let Some(id) = repo_id(tx, repo)? else {
            return Ok(false);
        };
        if refuse_if_immutable(tx, repo, id, tag).is_err() {
            return Ok(false);
        }
        let d = digest.to_string();
        let n = tx
            .prepare_cached("DELETE FROM tags WHERE repo_id = ?1 AND name = ?2 AND digest = ?3")
            .and_then(|mut s| s.execute(params![id, tag, d]))
            .map_err(db_err("pruning tag"))?;
        if n > 0 {
            record_tag_event(tx, id, tag, None, Some(&d), "retention")?;
        }
        Ok(n > 0)
    })
}

// ---- Garbage collection ----

pub(super) fn touch_blob(
    db: &SqliteMetadata,
    repo: &RepoName,
    digest: &Digest,
    debounce_ms: i64,
) -> Result<Option<u64>, MetaError> {
    let now = now_ms();
    let d = digest.to_string();
    let Some((size, last_used_ms)) = blob_link(db, repo, &d)? else {
        return Ok(None);
    };
    if last_used_ms > now - debounce_ms {
        return Ok(Some(size as u64));
    }
    // Stale: refresh it first. No row updated means GC removed the link since the read.
    let updated = db.write("recording blob use", |tx| {
        tx.prepare_cached(
            "UPDATE repo_blobs SET touched_ms = ?3
             WHERE repo_id = (SELECT id FROM repositories WHERE name = ?1) AND digest = ?2",
        )
        .and_then(|mut s| s.execute(params![repo.as_str(), d, now]))
        .map_err(db_err("recording blob use"))
    })?;
    Ok((updated > 0).then_some(size as u64))
}

/// A link's size and last use (link or touch time, ms).
/// A repository's link to a blob: its size and its last recorded use (ms).
pub(super) fn blob_link(
    db: &SqliteMetadata,
    repo: &RepoName,
    digest: &str,
) -> Result<Option<(i64, i64)>, MetaError> {
    db.read(|conn| {
        conn.prepare_cached(
            "SELECT b.size, max(b.linked_ms, coalesce(b.touched_ms, 0))
             FROM repo_blobs b JOIN repositories r ON r.id = b.repo_id
             WHERE r.name = ?1 AND b.digest = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![repo.as_str(), digest], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
        })
        .map_err(db_err("reading blob use"))
    })
}

/// What a [`blob_link`] answer means for a GET now.
pub(super) fn blob_use(link: Option<(i64, i64)>, debounce_ms: i64) -> BlobUse {
    match link {
        None => BlobUse::Unlinked,
        Some((size, last_used_ms)) if last_used_ms > now_ms() - debounce_ms => {
            BlobUse::Fresh(size.max(0) as u64)
        }
        Some(_) => BlobUse::Stale,
    }
}

pub(super) fn blob_link_count(db: &SqliteMetadata, digest: &Digest) -> Result<u64, MetaError> {
    db.read(|conn| {
        conn.prepare_cached("SELECT count(*) FROM repo_blobs WHERE digest = ?1")
            .and_then(|mut s| s.query_row([digest.to_string()], |r| r.get::<_, i64>(0)))
            .map(|n| n.max(0) as u64)
            .map_err(db_err("counting blob links"))
    })
}

/// Manifests of repository `?1` that nothing keeps: not reachable from a tag, from a
/// manifest a tag pointed at since `?2` (the time machine), or from a manifest pushed since
/// `?3`; reachability follows index → child and subject → referrer.
const DEAD_MANIFESTS: &str = "
WITH RECURSIVE live(digest) AS (
    SELECT digest FROM tags WHERE repo_id = ?1
    UNION SELECT digest FROM tag_history WHERE repo_id = ?1 AND at_ms >= ?2 AND digest IS NOT NULL
    UNION SELECT previous FROM tag_history WHERE repo_id = ?1 AND at_ms >= ?2 AND previous IS NOT NULL
    UNION SELECT digest FROM repo_manifests WHERE repo_id = ?1 AND pushed_ms >= ?3
    UNION SELECT r.child FROM manifest_refs r JOIN live l ON r.parent = l.digest
          WHERE r.repo_id = ?1 AND r.kind = 'manifest'
    UNION SELECT m.digest FROM repo_manifests m JOIN live l ON m.subject = l.digest
          WHERE m.repo_id = ?1
)
SELECT m.digest, length(c.content) FROM repo_manifests m
JOIN manifest_content c ON c.digest = m.digest
WHERE m.repo_id = ?1 AND m.digest NOT IN (SELECT digest FROM live)
LIMIT ?4";

pub(super) fn gc_manifests(
    db: &SqliteMetadata,
    keep: &GcWindow,
    dry_run: bool,
    limit: usize,
) -> Result<Vec<Collected>, MetaError> {
    let repos: Vec<(i64, String)> = db.read(|conn| {
        conn.prepare_cached("SELECT id, name FROM repositories ORDER BY id")
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .map_err(db_err("listing repositories"))
    })?;
    let pushed_since = keep.grace_start_ms.min(keep.window_start_ms);
    let mut out = Vec::new();
    for (id, name) in repos {
        if out.len() >= limit {
            break;
        }
        let budget = limit - out.len();
        let collected = db.write("collecting manifests", |tx| {
            let dead: Vec<(String, i64)> = tx
                .prepare_cached(DEAD_MANIFESTS)
                .and_then(|mut s| {
                    s.query_map(
                        params![id, keep.window_start_ms, pushed_since, budget as i64],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?
                    .collect()
                })
                .map_err(db_err("finding dead manifests"))?;
            let mut collected = Vec::with_capacity(dead.len());
            for (digest, size) in dead {
                if !dry_run {
                    for sql in [
                        "DELETE FROM manifest_refs WHERE repo_id = ?1 AND parent = ?2",
                        "DELETE FROM repo_manifests WHERE repo_id = ?1 AND digest = ?2",
                    ] {
                        tx.prepare_cached(sql)
                            .and_then(|mut s| s.execute(params![id, digest]))
                            .map_err(db_err("deleting manifest"))?;
                    }
                    tx.prepare_cached(
                        "DELETE FROM manifest_content WHERE digest = ?1
                         AND NOT EXISTS (SELECT 1 FROM repo_manifests WHERE digest = ?1)",
                    )
                    .and_then(|mut s| s.execute([&digest]))
                    .map_err(db_err("deleting manifest"))?;
                }
                collected.push(Collected {
                    repo: name.clone(),
                    digest: parse_digest(digest)?,
                    size: size.max(0) as u64,
                });
            }
            Ok(collected)
        })?;
        out.extend(collected);
    }
    Ok(out)
}

pub(super) fn gc_blob_links(
    db: &SqliteMetadata,
    keep: &GcWindow,
    dry_run: bool,
    limit: usize,
) -> Result<Vec<Collected>, MetaError> {
    db.write("collecting blob links", |tx| {
        let rows: Vec<(i64, String, String, i64)> = tx
            .prepare_cached(
                "SELECT b.repo_id, r.name, b.digest, b.size FROM repo_blobs b
                 JOIN repositories r ON r.id = b.repo_id
                 WHERE max(b.linked_ms, coalesce(b.touched_ms, 0)) < ?1
                   AND NOT EXISTS (SELECT 1 FROM manifest_refs m
                                   WHERE m.repo_id = b.repo_id AND m.child = b.digest)
                 LIMIT ?2",
            )
            .and_then(|mut s| {
                s.query_map(params![keep.grace_start_ms, limit as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect()
            })
            .map_err(db_err("finding unreferenced blobs"))?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, repo, digest, size) in rows {
            if !dry_run {
                tx.prepare_cached("DELETE FROM repo_blobs WHERE repo_id = ?1 AND digest = ?2")
                    .and_then(|mut s| s.execute(params![id, digest]))
                    .map_err(db_err("unlinking blob"))?;
            }
            out.push(Collected {
                repo,
                digest: parse_digest(digest)?,
                size: size.max(0) as u64,
            });
        }
        Ok(out)
    })
}

pub(super) fn prune_tag_history(db: &SqliteMetadata, before_ms: i64) -> Result<u64, MetaError> {
    db.write("pruning tag history", |tx| {
        tx.prepare_cached("DELETE FROM tag_history WHERE at_ms < ?1")
            .and_then(|mut s| s.execute([before_ms]))
            .map(|n| n as u64)
            .map_err(db_err("pruning tag history"))
    })
}
