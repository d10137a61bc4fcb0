//! Counts, bytes and digests reported against a real registry.

use crate::support::{config, start_registry};
use berth_loadtest::data::{derive_key, Image, ImageShape};
use berth_loadtest::scenario::{ids, push::Push};
use berth_loadtest::{run, ScenarioKind, UploadMode};

const KIB64: u64 = 64 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_counts_every_byte_in_every_upload_mode() {
    let Some(reg) = start_registry().await else {
        return;
    };
    let shape = ImageShape {
        layers: 2,
        layer_size: KIB64,
    };
    for (i, mode) in [
        UploadMode::Monolithic,
        UploadMode::Put,
        UploadMode::Stream,
        UploadMode::Chunked,
    ]
    .into_iter()
    .enumerate()
    {
        let mut cfg = config(ScenarioKind::Push, &reg.url);
        cfg.requests = Some(3);
        cfg.size = Some(KIB64);
        cfg.layers = Some(2);
        cfg.upload_mode = mode;
        cfg.chunk_size = 20_000; // not a divisor of 64 KiB: exercises a short last chunk
        cfg.seed = 100 + i as u64;
        let report = run(&cfg).await.expect("push run");
        let t = &report.targets[0];
        let images: Vec<Image> = (0..3)
            .map(|k| Push::image(cfg.seed, ids::PUSH, k, shape))
            .collect();
        let configs: u64 = images.iter().map(|im| im.config.content.len()).sum();
        let manifests: u64 = images.iter().map(|im| im.manifest.len() as u64).sum();
        let push = t.op("push").expect("push op");
        let blobs = t.op("blob-push").expect("blob-push op");
        let mput = t.op("manifest-put").expect("manifest-put op");
        assert_eq!(
            (push.requests, push.errors),
            (3, 0),
            "{mode:?}: {:?}",
            push.errors_by_kind
        );
        assert_eq!((blobs.requests, blobs.errors), (9, 0), "{mode:?}");
        assert_eq!(blobs.bytes, 3 * 2 * KIB64 + configs, "{mode:?}");
        assert_eq!(mput.bytes, manifests, "{mode:?}");
        assert_eq!(push.bytes, 3 * 2 * KIB64 + configs + manifests, "{mode:?}");
        assert_eq!(report.total_errors(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_reports_exact_bytes_and_verifies_digests() {
    let Some(reg) = start_registry().await else {
        return;
    };
    let mut cfg = config(ScenarioKind::Pull, &reg.url);
    cfg.requests = Some(6);
    cfg.count = Some(2);
    cfg.layers = Some(2);
    cfg.size = Some(KIB64);
    let report = run(&cfg).await.expect("pull run");
    let t = &report.targets[0];
    // Every image of the set has the same sizes (fixed-width keys and digests).
    let shape = ImageShape {
        layers: 2,
        layer_size: KIB64,
    };
    let img = Image::build(derive_key(cfg.seed, &[ids::PULL, 0]), shape);
    let pull = t.op("pull").expect("pull op");
    assert_eq!(
        (pull.requests, pull.errors),
        (6, 0),
        "{:?}",
        pull.errors_by_kind
    );
    assert_eq!(pull.bytes, 6 * img.total_bytes());
    let blobs = t.op("blob-get").expect("blob-get op");
    assert_eq!((blobs.requests, blobs.errors), (18, 0));
    assert_eq!(blobs.bytes, 6 * (2 * KIB64 + img.config.content.len()));
    let m = t.op("manifest-get").expect("manifest-get op");
    assert_eq!((m.requests, m.bytes), (6, 6 * img.manifest.len() as u64));
    assert!(pull.latency_us.p50 > 0 && pull.latency_us.p50 <= pull.latency_us.max);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_get_small_and_list_run_clean_and_bounded() {
    let Some(reg) = start_registry().await else {
        return;
    };
    let mut cfg = config(ScenarioKind::BlobGet, &reg.url);
    cfg.requests = Some(50);
    cfg.size = Some(KIB64);
    let report = run(&cfg).await.expect("blob-get run");
    let b = report.targets[0].op("blob-get").expect("blob-get op");
    assert_eq!((b.requests, b.errors, b.bytes), (50, 0, 50 * KIB64));

    let mut cfg = config(ScenarioKind::Small, &reg.url);
    cfg.requests = Some(30);
    cfg.count = Some(8);
    let report = run(&cfg).await.expect("small run");
    let ops = &report.targets[0].ops;
    assert_eq!(ops.iter().map(|o| o.requests).sum::<u64>(), 30);
    assert_eq!(report.total_errors(), 0);

    let mut cfg = config(ScenarioKind::List, &reg.url);
    cfg.requests = Some(6);
    cfg.count = Some(5);
    cfg.tags = 7;
    cfg.page_size = 3;
    let report = run(&cfg).await.expect("list run");
    let t = &report.targets[0];
    assert_eq!(report.total_errors(), 0, "{:?}", t.ops);
    assert_eq!(t.op("tags-walk").map(|o| o.requests), Some(3));
    // 7 tags at 3 per page: 3 pages per walk. distribution 2.8 ignores `n` on tags/list
    // (one page per walk); the walk's completeness is still checked (zero errors above).
    let want_pages = if reg.kind == "berth" { 9 } else { 3 };
    assert_eq!(t.op("tags-page").map(|o| o.requests), Some(want_pages));
    assert!(t.op("catalog-page").map_or(0, |o| o.requests) >= 3 * 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_bound_stops_and_two_targets_interleave() {
    let Some(reg) = start_registry().await else {
        return;
    };
    let mut cfg = config(ScenarioKind::BlobGet, &reg.url);
    cfg.targets.push(reg.url.clone());
    cfg.duration = Some(std::time::Duration::from_millis(600));
    cfg.size = Some(4096);
    let started = std::time::Instant::now();
    let report = run(&cfg).await.expect("timed run");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(report.targets.len(), 2);
    for t in &report.targets {
        assert!(
            t.measured_s >= 0.6 && t.measured_s < 5.0,
            "{}",
            t.measured_s
        );
        assert!(t
            .op("blob-get")
            .is_some_and(|o| o.requests > 0 && o.errors == 0));
    }
    assert_eq!(report.comparisons.len(), 1);
    let svg = berth_loadtest::plot::render(&report);
    assert!(svg.contains("<polyline"));
}
