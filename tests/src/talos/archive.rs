//! Kubeconfig archives as machined's `Kubeconfig` returns them: a gzip-compressed tar holding
//! one regular file named `kubeconfig` (mode 0600), plus damaged variants for tests.

use std::io::Write;

/// A kubeconfig-shaped document for tests (no real credentials).
pub const SAMPLE_KUBECONFIG: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: homelab\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority-data: dGVzdA==\ncontexts:\n- name: admin@homelab\n  context:\n    cluster: homelab\n    user: admin@homelab\ncurrent-context: admin@homelab\nusers:\n- name: admin@homelab\n  user:\n    client-certificate-data: dGVzdA==\n    client-key-data: dGVzdA==\n";

/// A tar with one regular file per `(name, body)`.
pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, body) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(body.len() as u64);
        h.set_mode(0o600);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mtime(0);
        tar.append_data(&mut h, name, *body).expect("append to tar");
    }
    tar.into_inner().expect("finish tar")
}

/// gzip-compresses `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(data).expect("gzip");
    gz.finish().expect("gzip finish")
}

/// The archive machined returns for `kubeconfig`.
pub fn kubeconfig_archive(kubeconfig: &str) -> Vec<u8> {
    gzip(&tar_of(&[("kubeconfig", kubeconfig.as_bytes())]))
}

/// A valid archive cut to `keep` of its bytes (gzip stream ends early).
pub fn truncated(archive: &[u8], keep: usize) -> Vec<u8> {
    archive[..keep.min(archive.len())].to_vec()
}

/// A valid archive with its deflate data damaged (bytes flipped past the gzip header).
pub fn corrupted(archive: &[u8]) -> Vec<u8> {
    let mut out = archive.to_vec();
    for b in out.iter_mut().skip(12).take(16) {
        *b ^= 0xa5;
    }
    out
}
