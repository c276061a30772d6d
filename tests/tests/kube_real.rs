//! The Kubernetes half of the boot against a real kube-apiserver and etcd.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::time::Duration;

use bootstrap_agent::bundle::Bundle;
use bootstrap_agent::kube::Cluster;
use bootstrap_agent_tests::envtest::{AGENT_USER, ApiServer};
use bootstrap_agent_tests::kubeapi::fixture::{Corpus, compose_bundle};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_are_established_on_a_real_api_server() {
    let server = ApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    compose_bundle(dir.path(), Corpus { gateway_api: true });
    let bundle = Bundle::load_dir(dir.path()).unwrap();
    let cluster = Cluster::connect(&server.kubeconfig()).await.unwrap();
    let r = cluster.install_crds(&bundle, Duration::from_secs(20)).await;
    let reqs = server.requests_by(AGENT_USER).await;
    let watches = reqs.iter().filter(|r| r.verb == "watch").count();
    eprintln!("{} requests, {watches} watches", reqs.len());
    r.expect("CRDs installed");
}
