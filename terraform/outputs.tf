output "node_ip" {
  description = "Static IPv4 address of the node: Talos API (talosctl -n), Kubernetes API (:6443) and Traefik (:80/:443)."
  value       = var.node_ip
}

output "dhcp_address" {
  description = "Address the first machine configuration was applied to (the VM's DHCP lease in maintenance mode)."
  value       = local.dhcp_address
}

output "cluster_endpoint" {
  description = "Kubernetes API endpoint."
  value       = local.cluster_endpoint
}

output "vm_id" {
  description = "Proxmox VM ID."
  value       = proxmox_virtual_environment_vm.talos.vm_id
}

output "talosconfig_path" {
  description = "SOPS-encrypted talosconfig: `sops decrypt talosconfig.enc.yaml > ~/.talos/config` (needs the age key)."
  value       = abspath("${path.root}/${var.export_dir}/talosconfig.enc.yaml")
}

output "kubeconfig_path" {
  description = "SOPS-encrypted kubeconfig: `sops decrypt kubeconfig.enc.yaml > ~/.kube/config` (needs the age key)."
  value       = abspath("${path.root}/${var.export_dir}/kubeconfig.enc.yaml")
}

output "agent_status_command" {
  description = "Reads the bootstrap agent's status document (progress, and the TPM recipient to seal the SOPS key to)."
  value       = "talosctl --talosconfig <(sops decrypt ${abspath("${path.root}/${var.export_dir}/talosconfig.enc.yaml")}) -n ${var.node_ip} read /var/lib/bootstrap-agent/status.json"
}

output "talosconfig" {
  description = "talosconfig in plain text (sensitive; prefer the encrypted file)."
  value       = data.talos_client_configuration.this.talos_config
  sensitive   = true
}

output "kubeconfig" {
  description = "kubeconfig in plain text (sensitive; prefer the encrypted file)."
  value       = talos_cluster_kubeconfig.this.kubeconfig_raw
  sensitive   = true
}
