terraform {
  required_version = ">= 1.9.0"

  required_providers {
    proxmox = {
      source  = "bpg/proxmox"
      version = "0.111.1"
    }
    # 0.11.0 is the newest release (0.12 exists only as alpha builds on Talos 1.14 alphas); it is
    # built on Talos machinery v1.13.0, whose generator, patcher and merge code equal v1.13.9's.
    talos = {
      source  = "siderolabs/talos"
      version = "0.11.0"
    }
    # random_bytes: the bootstrap agent's TPM key factor (32 random bytes, sensitive in state).
    random = {
      source  = "hashicorp/random"
      version = "3.9.0"
    }
  }
}

provider "proxmox" {
  endpoint  = var.proxmox_endpoint
  api_token = var.proxmox_api_token
  insecure  = var.proxmox_insecure
}
