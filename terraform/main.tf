# Proxmox VM + Talos machine configuration for the single-node homelab.
#
# Flow: upload our SecureBoot ISO -> create the VM (OVMF in SecureBoot setup
# mode, vTPM 2.0) -> the ISO enrolls our SecureBoot keys and boots Talos in
# maintenance mode -> apply the machine configuration at the DHCP address the
# QEMU guest agent reports -> Talos installs, encrypts STATE/EPHEMERAL with
# TPM-sealed LUKS2 keys and reboots with the static IP -> the bootstrap agent
# (a Talos extension service) bootstraps etcd, unseals the SOPS key, installs
# Flux and waits until it is Ready. There is deliberately no
# talos_machine_bootstrap resource: the node bootstraps itself.

locals {
  cluster_endpoint = "https://${var.node_ip}:6443"
  node_cidr        = "${var.node_ip}/${var.node_prefix_length}"

  # First non-loopback IPv4 the guest agent reports while Talos runs from the
  # ISO in maintenance mode (DHCP). Only used for the first configuration.
  dhcp_address = try(
    [for address in flatten(proxmox_virtual_environment_vm.talos.ipv4_addresses) : address if address != "127.0.0.1"][0],
    var.node_ip,
  )

  # The bootstrap agent's configuration, mounted into the extension service at
  # /usr/local/etc/bootstrap-agent/config.yaml. The Flux fields carry the same
  # values as kubernetes/flux-system/gotk-sync.yaml, so the objects the agent
  # creates and the ones Git holds never fight.
  agent_config = {
    talos = {
      socket        = "/system/run/machined/machine.sock"
      bootstrapEtcd = true
    }
    tpm = {
      device  = "/dev/tpmrm0"
      pcrs    = [7]
      lockPcr = 15
    }
    secrets = var.sops_age_key_sealed == "" ? [] : [
      {
        namespace = "flux-system"
        name      = "sops-age"
        key       = "age.agekey"
        sealed    = trimspace(var.sops_age_key_sealed)
      },
    ]
    bundle = {
      dir = "/usr/local/lib/containers/bootstrap-agent/bundle"
    }
    flux = {
      url      = var.flux_git_url
      branch   = var.flux_git_branch
      path     = "./kubernetes/flux-system"
      interval = "1m"
    }
    status = "/var/lib/bootstrap-agent/status.json"
  }

  config_patches = [
    yamlencode({
      machine = {
        install = {
          disk  = var.install_disk
          image = "${var.talos_installer_repository}:${var.talos_version}"
          wipe  = false
        }
        network = {
          hostname    = var.vm_name
          nameservers = var.nameservers
          interfaces = [
            {
              deviceSelector = { hardwareAddr = lower(var.mac_address) }
              dhcp           = false
              addresses      = [local.node_cidr]
              routes         = [{ network = "0.0.0.0/0", gateway = var.gateway }]
            },
          ]
        }
      }
      cluster = {
        # Single node: workloads run on the control plane.
        allowSchedulingOnControlPlanes = true
      }
    }),
    # LUKS2 on STATE and EPHEMERAL, keys sealed to the vTPM (PCR 7 + Talos's
    # signed PCR 11 policy).
    yamlencode({
      apiVersion = "v1alpha1"
      kind       = "VolumeConfig"
      name       = "STATE"
      encryption = { provider = "luks2", keys = [{ slot = 0, tpm = {} }] }
    }),
    yamlencode({
      apiVersion = "v1alpha1"
      kind       = "VolumeConfig"
      name       = "EPHEMERAL"
      encryption = { provider = "luks2", keys = [{ slot = 0, tpm = {} }] }
    }),
    yamlencode({
      apiVersion = "v1alpha1"
      kind       = "ExtensionServiceConfig"
      name       = "bootstrap-agent"
      configFiles = [
        {
          content   = yamlencode(local.agent_config)
          mountPath = "/usr/local/etc/bootstrap-agent/config.yaml"
        },
      ]
      environment = ["RUST_LOG=info"]
    }),
  ]
}

# ---------------------------------------------------------------- image and VM

resource "proxmox_virtual_environment_file" "talos_iso" {
  content_type = "iso"
  datastore_id = var.iso_datastore
  node_name    = var.proxmox_node

  source_file {
    path      = var.talos_iso_path
    file_name = "talos-${var.talos_version}-bootstrap-agent-secureboot.iso"
  }
}

resource "proxmox_virtual_environment_vm" "talos" {
  name            = var.vm_name
  node_name       = var.proxmox_node
  vm_id           = var.vm_id
  description     = "Talos ${var.talos_version} (bootstrap-agent), managed by Terraform"
  tags            = ["talos", "terraform"]
  machine         = "q35"
  bios            = "ovmf"
  on_boot         = true
  stop_on_destroy = true
  scsi_hardware   = "virtio-scsi-single"
  boot_order      = ["scsi0", "ide2"]

  # Talos's qemu-guest-agent extension reports the DHCP lease of maintenance
  # mode, which the first configuration is applied to.
  agent {
    enabled = true
    trim    = true
    timeout = "15m"
    wait_for_ip {
      ipv4 = true
    }
  }

  cpu {
    cores = var.cpu_cores
    type  = "host"
  }

  memory {
    dedicated = var.memory_mb
  }

  # OVMF variables without Microsoft's keys: the firmware starts in SecureBoot
  # setup mode and the Talos ISO enrolls our own PK/KEK/db on first boot.
  efi_disk {
    datastore_id      = var.vm_datastore
    file_format       = "raw"
    type              = "4m"
    pre_enrolled_keys = false
  }

  # vTPM 2.0. Its state holds the keys that unseal the disks and the SOPS key:
  # it must outlive every plan (see lifecycle below).
  tpm_state {
    datastore_id = var.vm_datastore
    version      = "v2.0"
  }

  disk {
    datastore_id = var.vm_datastore
    interface    = "scsi0"
    size         = var.disk_gb
    file_format  = "raw"
    iothread     = true
    discard      = "on"
    ssd          = true
  }

  cdrom {
    interface = "ide2"
    file_id   = proxmox_virtual_environment_file.talos_iso.id
  }

  network_device {
    bridge      = var.network_bridge
    model       = "virtio"
    mac_address = var.mac_address
  }

  operating_system {
    type = "l26"
  }

  serial_device {}

  lifecycle {
    # Replacing the VM would destroy the vTPM state and with it every sealed
    # key. Remove this guard deliberately to rebuild from scratch.
    prevent_destroy = true
    # A new ISO or a changed TPM/EFI block must never turn into a replacement:
    # Talos upgrades itself from the installer image (talos_installer_repository).
    ignore_changes = [tpm_state, efi_disk, cdrom]

    precondition {
      condition     = cidrhost("${var.gateway}/${var.node_prefix_length}", 0) == cidrhost(local.node_cidr, 0)
      error_message = "gateway ${var.gateway} is not in the node's network ${local.node_cidr}."
    }
  }
}

# ---------------------------------------------------------------- Talos

resource "talos_machine_secrets" "this" {
  talos_version = var.talos_version

  lifecycle {
    # New secrets mean a new cluster; a Talos upgrade must not regenerate them.
    ignore_changes = [talos_version]
  }
}

data "talos_machine_configuration" "this" {
  cluster_name       = var.cluster_name
  cluster_endpoint   = local.cluster_endpoint
  machine_type       = "controlplane"
  machine_secrets    = talos_machine_secrets.this.machine_secrets
  talos_version      = var.talos_version
  kubernetes_version = var.kubernetes_version
  config_patches     = local.config_patches
  docs               = false
  examples           = false
}

# First configuration: at the DHCP address, while Talos runs from the ISO in
# maintenance mode. Later changes go through talos_machine_configuration_apply.this.
resource "talos_machine_configuration_apply" "initial" {
  client_configuration        = talos_machine_secrets.this.client_configuration
  machine_configuration_input = data.talos_machine_configuration.this.machine_configuration
  node                        = local.dhcp_address
  endpoint                    = local.dhcp_address

  lifecycle {
    ignore_changes = [node, endpoint, machine_configuration_input]
  }
}

# Every configuration after the first: at the static IP.
resource "talos_machine_configuration_apply" "this" {
  client_configuration        = talos_machine_secrets.this.client_configuration
  machine_configuration_input = data.talos_machine_configuration.this.machine_configuration
  node                        = var.node_ip
  endpoint                    = var.node_ip

  timeouts = {
    create = "20m"
    update = "10m"
  }

  depends_on = [talos_machine_configuration_apply.initial]
}

data "talos_client_configuration" "this" {
  cluster_name         = var.cluster_name
  client_configuration = talos_machine_secrets.this.client_configuration
  endpoints            = [var.node_ip]
  nodes                = [var.node_ip]
}

# Served once the agent has bootstrapped the cluster.
resource "talos_cluster_kubeconfig" "this" {
  client_configuration = talos_machine_secrets.this.client_configuration
  node                 = var.node_ip
  endpoint             = var.node_ip

  timeouts = {
    create = "30m"
  }

  depends_on = [talos_machine_configuration_apply.this]
}

# ---------------------------------------------------------------- encrypted exports

# talosconfig and kubeconfig leave Terraform only SOPS-encrypted to
# var.sops_age_recipient: the plaintext goes to sops through a pipe, never to a
# file. `--config /dev/null` keeps the repository's .sops.yaml out of it.
locals {
  exports = {
    talosconfig = data.talos_client_configuration.this.talos_config
    kubeconfig  = talos_cluster_kubeconfig.this.kubeconfig_raw
  }
}

resource "terraform_data" "export" {
  for_each = toset(keys(local.exports))

  triggers_replace = [sha256(local.exports[each.key]), var.sops_age_recipient]

  provisioner "local-exec" {
    interpreter = ["/bin/sh", "-c"]
    command     = <<-EOT
      set -eu
      umask 077
      out="$EXPORT_DIR/$EXPORT_NAME.enc.yaml"
      printf '%s\n' "$EXPORT_CONTENT" \
        | sops --config /dev/null encrypt --age "$EXPORT_RECIPIENT" --input-type yaml --output-type yaml /dev/stdin \
        > "$out.tmp"
      mv "$out.tmp" "$out"
    EOT
    environment = {
      EXPORT_DIR       = abspath("${path.root}/${var.export_dir}")
      EXPORT_NAME      = each.key
      EXPORT_CONTENT   = local.exports[each.key]
      EXPORT_RECIPIENT = var.sops_age_recipient
    }
  }
}
