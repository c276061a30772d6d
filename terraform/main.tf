# Proxmox VM + Talos machine configuration for the single-node homelab.
#
# Flow: upload our SecureBoot ISO -> create the VM (OVMF in SecureBoot setup
# mode, vTPM 2.0) -> the ISO enrolls our SecureBoot keys and boots Talos in
# maintenance mode -> apply the machine configuration at the DHCP address the
# QEMU guest agent reports -> Talos installs, encrypts STATE/EPHEMERAL with
# TPM-sealed LUKS2 keys and reboots with the static IP -> the bootstrap agent
# (a Talos extension service) bootstraps etcd, unseals the SOPS key, installs
# Flux and waits until it is Ready. There is deliberately no
# talos_machine_bootstrap resource: the node bootstraps itself. Once Talos is
# installed, talos_iso_attached = false ejects and deletes the ISO (at the latest
# in the apply that delivers the sealed key: a precondition refuses it otherwise).
#
# The SOPS key takes two applies: the first boot enrols the TPM and shows its
# recipient and salt key name; the operator seals the key to that recipient and
# applies again with both pinned. The agent locks the TPM seed at every boot, so
# that apply reboots the node (talos_machine_configuration_apply
# .reboot_for_sealed_inputs) and the next boot unseals it.

locals {
  # One source of truth for versions (Talos, Kubernetes, the extension, the installer): the file
  # the Makefile, image-factory and Renovate read too.
  versions           = yamldecode(file("${path.module}/../image-factory/versions.yaml"))
  talos_version      = local.versions.talos
  kubernetes_version = local.versions.kubernetes
  # What `make push-installer` pushes (Makefile: INSTALLER_IMAGE).
  installer_image = "${local.versions.installer}:${local.versions.talos}-bootstrap-agent.${local.versions.extension}"
  # What `make image` writes (Makefile: ISO; imager's name for a SecureBoot metal ISO).
  talos_iso_path = "${path.module}/../_out/metal-amd64-secureboot.iso"

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
      # The configuration's half of the key: the identity is derived from the TPM's seed and
      # this, so neither our signed image booted with another configuration (which reads the
      # seed) nor a leaked configuration alone opens the sealed key.
      factor = random_bytes.tpm_factor.hex
      # Pinned after the first boot (shown by `bootstrap-agent status`): a TPM that yields
      # another recipient is refused, and an interposer cannot substitute the salt key.
      recipient   = var.tpm_recipient == "" ? null : var.tpm_recipient
      saltKeyName = var.tpm_salt_key_name == "" ? null : var.tpm_salt_key_name
    }
    # Always listed, so that the first boot enrols the TPM and waits for the sealed key.
    secrets = [
      {
        namespace = "flux-system"
        name      = "sops-age"
        key       = "age.agekey"
        sealed    = var.sops_age_key_sealed == "" ? null : trimspace(var.sops_age_key_sealed)
      },
    ]
    # The bundle the extension embeds, as the service sees it: its root is
    # /usr/local/lib/containers/bootstrap-agent on the host.
    bundle = {
      dir = "/bundle"
    }
    flux = {
      url      = var.flux_git_url
      branch   = var.flux_git_branch
      path     = "./kubernetes/flux-system"
      interval = "1m"
    }
    status = "/var/lib/bootstrap-agent/status.json"
  }

  # The machine-configuration patches, one YAML template each (terraform/patches/), written for
  # the Talos version pinned above: multi-document configuration where that version has it.
  # tests/homelab/test_talos_config.py renders them, merges them onto the documents Talos's
  # generator emits and checks the result against that version's schema and conflict rules.
  config_patches = [
    templatefile("${path.module}/patches/install.yaml.tftpl", {
      install_disk    = var.install_disk
      installer_image = local.installer_image
    }),
    templatefile("${path.module}/patches/network.yaml.tftpl", {
      hostname      = var.vm_name
      nameservers   = [for ns in var.nameservers : { address = ns }]
      link_selector = "mac(link.permanent_addr) == \"${lower(var.mac_address)}\""
      address       = local.node_cidr
      gateway       = var.gateway
    }),
    templatefile("${path.module}/patches/disk-encryption.yaml.tftpl", {}),
    templatefile("${path.module}/patches/bootstrap-agent.yaml.tftpl", {
      agent_config = yamlencode(local.agent_config)
    }),
  ]
}

# ---------------------------------------------------------------- TPM key factor

# 32 random bytes that only the machine configuration carries (tpm.factor): a new value
# changes the TPM recipient, and the sealed key would have to be sealed again.
resource "random_bytes" "tpm_factor" {
  length = 32

  lifecycle {
    prevent_destroy = true
  }
}

# ---------------------------------------------------------------- image and VM

# Only while the VM needs it to install (talos_iso_attached): afterwards it is deleted, so our
# signed image cannot be booted with another machine configuration.
resource "proxmox_virtual_environment_file" "talos_iso" {
  count        = var.talos_iso_attached ? 1 : 0
  content_type = "iso"
  datastore_id = var.iso_datastore
  node_name    = var.proxmox_node

  source_file {
    path      = local.talos_iso_path
    file_name = "talos-${local.talos_version}-bootstrap-agent.${local.versions.extension}-secureboot.iso"
  }

  lifecycle {
    precondition {
      condition     = fileexists(local.talos_iso_path)
      error_message = "${local.talos_iso_path} does not exist: build it with `make image BUNDLE=target/bundle` (README, step 3)."
    }
  }
}

resource "proxmox_virtual_environment_vm" "talos" {
  name            = var.vm_name
  node_name       = var.proxmox_node
  vm_id           = var.vm_id
  description     = "Talos ${local.talos_version} (bootstrap-agent ${local.versions.extension}), managed by Terraform"
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

  # Our ISO until Talos has installed itself; then file_id "none", which empties the drive in
  # place (bpg/proxmox v0.111.1: docs/resources/virtual_environment_vm.md:169-177, "Use `none` to
  # leave the CD-ROM drive empty"; proxmoxtf/resource/vm/vm.go:6334-6378 rewrites the drive on a
  # change, no reboot).
  cdrom {
    interface = "ide2"
    file_id   = try(proxmox_virtual_environment_file.talos_iso[0].id, "none")
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
    # A changed TPM/EFI block must never turn into a replacement. Talos upgrades itself from
    # the installer image (image-factory/versions.yaml); the CD-ROM changes in place.
    ignore_changes = [tpm_state, efi_disk]

    precondition {
      condition     = cidrhost("${var.gateway}/${var.node_prefix_length}", 0) == cidrhost(local.node_cidr, 0)
      error_message = "gateway ${var.gateway} is not in the node's network ${local.node_cidr}."
    }
  }
}

# ---------------------------------------------------------------- Talos

resource "talos_machine_secrets" "this" {
  talos_version = local.talos_version

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
  talos_version      = local.talos_version
  kubernetes_version = local.kubernetes_version
  config_patches     = local.config_patches
  docs               = false
  examples           = false

  lifecycle {
    precondition {
      condition     = can(regex("^v1\\.13\\.[0-9]+$", local.talos_version))
      error_message = "image-factory/versions.yaml: talos is ${local.talos_version}; the patches in terraform/patches/ are written for released Talos 1.13 versions (1.14's generator emits documents they conflict with: adapt them and their model in tests/homelab/talos_model.py first)."
    }
    precondition {
      condition     = var.sops_age_key_sealed == "" || var.tpm_recipient != ""
      error_message = "sops_age_key_sealed is set but tpm_recipient is empty: pin the recipient the key was sealed to (and tpm_salt_key_name), as `bootstrap-agent status` showed them at the first boot."
    }
    # A sealed key means the install is done (the first boot has shown the recipient it was
    # sealed to): the ISO must go in the same apply, or our signed SecureBoot image stays
    # bootable in the VM with a foreign machine configuration.
    precondition {
      condition     = var.sops_age_key_sealed == "" || !var.talos_iso_attached
      error_message = "sops_age_key_sealed is set but talos_iso_attached is still true: Talos is installed by now (the first boot showed the TPM recipient), so set talos_iso_attached = false in this same apply; it empties the VM's CD-ROM drive and deletes the uploaded ISO, so nobody can boot our signed image with another machine configuration (README, step 6)."
    }
  }
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

# The agent extends its lock PCR at every boot (first boot included), so a sealed key that
# reaches a running node can only be unsealed after a reboot. When the sealed key is first set,
# and whenever it changes, this applies the configuration once more with apply_mode "reboot":
# Talos persists it and reboots (terraform-provider-talos v0.11.0
# pkg/talos/talos_machine_configuration_apply_resource.go:108-117, the modes; Talos v1.13.9
# internal/app/machined/internal/server/v1alpha1/v1alpha1_server.go:322-337, REBOOT persists the
# configuration and runs the reboot sequence whatever changed). It ignores every other change:
# those go through talos_machine_configuration_apply.this, which applies after it and then finds
# nothing to change.
resource "terraform_data" "sealed_inputs" {
  input = sha256(trimspace(var.sops_age_key_sealed))
}

resource "talos_machine_configuration_apply" "reboot_for_sealed_inputs" {
  count = var.sops_age_key_sealed == "" ? 0 : 1

  client_configuration        = talos_machine_secrets.this.client_configuration
  machine_configuration_input = data.talos_machine_configuration.this.machine_configuration
  node                        = var.node_ip
  endpoint                    = var.node_ip
  apply_mode                  = "reboot"

  timeouts = {
    create = "20m"
  }

  lifecycle {
    ignore_changes       = [machine_configuration_input]
    replace_triggered_by = [terraform_data.sealed_inputs]
  }

  depends_on = [talos_machine_configuration_apply.initial]
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

  depends_on = [
    talos_machine_configuration_apply.initial,
    talos_machine_configuration_apply.reboot_for_sealed_inputs,
  ]
}

data "talos_client_configuration" "this" {
  cluster_name         = var.cluster_name
  client_configuration = talos_machine_secrets.this.client_configuration
  endpoints            = [var.node_ip]
  nodes                = [var.node_ip]
}

# machined generates the admin kubeconfig from the cluster CA in the machine configuration
# (Talos v1.13.9 internal/app/machined/internal/server/v1alpha1/v1alpha1_server.go:1260-1300): it
# is served as soon as the installed node answers at its static IP, before etcd or the API server
# exist. It says nothing about the agent or the cluster; `bootstrap-agent status` does.
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
