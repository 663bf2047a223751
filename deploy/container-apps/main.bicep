// Sluice on Azure Container Apps: the image built from the repository's Dockerfile, behind the
// environment's HTTPS ingress, scaled on concurrent requests, with a user-assigned managed identity
// that holds "Cognitive Services OpenAI User" on an Azure OpenAI account, secrets as Key Vault
// references, and optionally Azure Cache for Redis (config `state.redis`) and a Storage account
// for async jobs (config `jobs.store.azure`).
//
//   az deployment group create -g <rg> -f deploy/container-apps/main.bicep \
//     -p @deploy/container-apps/main.parameters.example.json -p image=<registry>/sluice:<tag>
//
// The config (param `config`, the gateway's JSON config as an object) is written to the Container
// App secret `sluice-config`, mounted as the file /etc/sluice/sluice.json, and SLUICE_CONFIG names
// that file (adapters/node/config-source.ts reads it; a changed secret takes effect with the next
// revision). `${NAME}` in the config is read from the container's environment:
//   AZURE_CLIENT_ID  the identity's client id: "auth": {"type": "managed-identity", "clientId": "${AZURE_CLIENT_ID}"}
//   REDIS_URL        with deployRedis: "state": {"redis": {"url": "${REDIS_URL}"}}
//   JOBS_STORAGE     with deployJobsStorage: "jobs": {"store": {"type": "azure", "connectionString": "${JOBS_STORAGE}"}}
//   each key of `keyVaultSecrets`, from its Key Vault secret (e.g. an API key: "key": "${PAYG_KEY}")
//
// Platform limits that bear on a gateway:
//   - The ingress (Envoy) ends a request after 240 s on the Consumption profile, streams included
//     (not configurable there). Requests that can run longer (batch, agents, reasoning models) should
//     go async: `Prefer: respond-async` gets a 202 and a job to poll (README, "Long-running async
//     jobs"); with several replicas keep jobs in Storage (deployJobsStorage), not on a replica's disk.
//   - On a stop (a new revision, scale-in) a replica gets SIGTERM, then SIGKILL after
//     terminationGracePeriodSeconds: set here above the config's server.shutdownGraceMs (default 30 s),
//     so in-flight requests and streams finish within the gateway's own grace. Container Apps allows
//     at most 600 s.
//   - Probes (port 8000, open even when inbound auth is on): /startup answers once the config is
//     loaded and the port is open; /readiness is 503 while every backend's circuit is open (the
//     replica is taken out of the ingress until one is usable); /liveness answers while the event
//     loop runs. /_gateway/health (backend state as JSON) needs an operator credential once auth is on.
//   - The HTTP scale rule counts concurrent requests: a stream holds one for its whole length, so
//     concurrentRequestsPerReplica is the number of streams one replica carries before another starts.
//     Without state.redis every replica keeps its own budgets, cooldowns and queue.

targetScope = 'resourceGroup'

@description('Prefix of every resource name, and the Container App\'s name (lower-case letters, digits, hyphens).')
@minLength(3)
@maxLength(18)
param name string = 'sluice'

@description('Region of every resource.')
param location string = resourceGroup().location

@description('The gateway image, built from the repository Dockerfile: <registry>/sluice:<tag>.')
param image string

@description('Azure Container Registry (in this resource group) the image is pulled from with the managed identity, which gets AcrPull on it. Empty: a public image.')
param acrName string = ''

@description('The gateway config (docs/config.schema.json) as a JSON object; secrets as \${NAME}, see the header.')
param config object

@description('Environment variables from Key Vault secrets: NAME → versionless secret URI (https://<vault>.vault.azure.net/secrets/<secret>).')
param keyVaultSecrets object = {}

@description('The Key Vault holding those secrets (this resource group); the identity gets Key Vault Secrets User on it. Empty: no Key Vault.')
param keyVaultName string = ''

@description('The Azure OpenAI account the gateway calls with its managed identity; the identity gets Cognitive Services OpenAI User on it. Empty: none.')
param openAiAccountName string = ''

@description('Resource group of that Azure OpenAI account.')
param openAiResourceGroup string = resourceGroup().name

@description('Replicas kept running at least (1 or more: no cold start for a gateway).')
@minValue(0)
param minReplicas int = 1

@description('Replicas at most.')
@minValue(1)
@maxValue(300)
param maxReplicas int = 10

@description('Concurrent requests (streams included) per replica before the HTTP rule adds a replica.')
@minValue(1)
param concurrentRequestsPerReplica int = 100

@description('vCPU per replica (0.25 to 4; memory 2 GiB per vCPU).')
param cpu string = '1.0'

@description('Memory per replica, e.g. 2Gi (twice the vCPU count in GiB).')
param memory string = '2Gi'

@description('Create an Azure Cache for Redis and pass its URL as REDIS_URL (config state.redis: shared budgets, cooldowns, breakers).')
param deployRedis bool = false

@description('Create a Storage account and pass its connection string as JOBS_STORAGE (config jobs.store of type azure: async jobs every replica shares).')
param deployJobsStorage bool = false

var suffix = uniqueString(resourceGroup().id, name)
// Storage account names: lower-case letters and digits only.
var compactName = toLower(replace(name, '-', ''))
// Role definition ids (built-in roles).
var openAiUserRole = '5e0bd9bd-7b93-4f28-af87-19fc36ad61bd' // Cognitive Services OpenAI User
var keyVaultSecretsUserRole = '4633458b-17de-408a-b874-0445c86b69e6' // Key Vault Secrets User
var acrPullRole = '7f951dda-4ed3-4680-a7ca-43fe172d538d' // AcrPull

// The gateway's SIGTERM grace (server.shutdownGraceMs, default 30 000 ms) plus time to exit;
// the platform kills the replica after this.
var shutdownGraceMs = config.?server.?shutdownGraceMs ?? 30000
var terminationGracePeriodSeconds = min(600, (shutdownGraceMs / 1000) + 15)

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${name}-id'
  location: location
}

module openAiRole '../modules/role-assignment.bicep' = if (!empty(openAiAccountName)) {
  name: '${name}-openai-role'
  scope: resourceGroup(openAiResourceGroup)
  params: {
    kind: 'openai'
    resourceName: openAiAccountName
    principalId: identity.properties.principalId
    roleDefinitionId: openAiUserRole
  }
}

module keyVaultRole '../modules/role-assignment.bicep' = if (!empty(keyVaultName)) {
  name: '${name}-keyvault-role'
  params: {
    kind: 'keyvault'
    resourceName: keyVaultName
    principalId: identity.properties.principalId
    roleDefinitionId: keyVaultSecretsUserRole
  }
}

module acrRole '../modules/role-assignment.bicep' = if (!empty(acrName)) {
  name: '${name}-acr-role'
  params: {
    kind: 'acr'
    resourceName: acrName
    principalId: identity.properties.principalId
    roleDefinitionId: acrPullRole
  }
}

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: '${name}-logs-${suffix}'
  location: location
  properties: {
    sku: { name: 'PerGB2018' }
    retentionInDays: 30
  }
}

resource managedEnv 'Microsoft.App/managedEnvironments@2024-03-01' = {
  name: '${name}-env'
  location: location
  properties: {
    appLogsConfiguration: {
      destination: 'log-analytics'
      logAnalyticsConfiguration: {
        customerId: logs.properties.customerId
        sharedKey: logs.listKeys().primarySharedKey
      }
    }
  }
}

resource redis 'Microsoft.Cache/redis@2024-03-01' = if (deployRedis) {
  name: '${name}-redis-${suffix}'
  location: location
  properties: {
    sku: { name: 'Standard', family: 'C', capacity: 1 }
    enableNonSslPort: false
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

resource jobsStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = if (deployJobsStorage) {
  name: take('${compactName}jobs${suffix}', 24)
  location: location
  sku: { name: 'Standard_LRS' }
  kind: 'StorageV2'
  properties: {
    minimumTlsVersion: 'TLS1_2'
    allowBlobPublicAccess: false
    supportsHttpsTrafficOnly: true
  }
}

// Container App secrets: the config, the Key Vault references, and the connection strings of the
// resources created here. Secret names: lower case, digits and hyphens.
var keyVaultSecretList = [for s in items(keyVaultSecrets): {
  name: toLower(replace(s.key, '_', '-'))
  keyVaultUrl: s.value
  identity: identity.id
}]
var keyVaultEnv = [for s in items(keyVaultSecrets): {
  name: s.key
  secretRef: toLower(replace(s.key, '_', '-'))
}]
var redisSecrets = deployRedis ? [
  {
    name: 'redis-url'
    value: 'rediss://:${redis!.listKeys().primaryKey}@${redis!.properties.hostName}:${redis!.properties.sslPort}'
  }
] : []
var redisEnv = deployRedis ? [
  {
    name: 'REDIS_URL'
    secretRef: 'redis-url'
  }
] : []
var jobsSecrets = deployJobsStorage ? [
  {
    name: 'jobs-storage'
    value: 'DefaultEndpointsProtocol=https;AccountName=${jobsStorage!.name};AccountKey=${jobsStorage!.listKeys().keys[0].value};EndpointSuffix=${az.environment().suffixes.storage}'
  }
] : []
var jobsEnv = deployJobsStorage ? [
  {
    name: 'JOBS_STORAGE'
    secretRef: 'jobs-storage'
  }
] : []

resource app 'Microsoft.App/containerApps@2024-03-01' = {
  name: name
  location: location
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    managedEnvironmentId: managedEnv.id
    configuration: {
      activeRevisionsMode: 'Single'
      ingress: {
        external: true
        targetPort: 8000
        transport: 'http'
        allowInsecure: false
        traffic: [
          {
            latestRevision: true
            weight: 100
          }
        ]
      }
      registries: empty(acrName) ? [] : [
        {
          server: '${acrName}${az.environment().suffixes.acrLoginServer}'
          identity: identity.id
        }
      ]
      secrets: concat([
        {
          name: 'sluice-config'
          value: string(config)
        }
      ], keyVaultSecretList, redisSecrets, jobsSecrets)
    }
    template: {
      terminationGracePeriodSeconds: terminationGracePeriodSeconds
      containers: [
        {
          name: 'sluice'
          image: image
          resources: {
            cpu: json(cpu)
            memory: memory
          }
          env: concat([
            {
              name: 'SLUICE_CONFIG'
              value: '/etc/sluice/sluice.json'
            }
            {
              name: 'AZURE_CLIENT_ID'
              value: identity.properties.clientId
            }
          ], keyVaultEnv, redisEnv, jobsEnv)
          volumeMounts: [
            {
              volumeName: 'config'
              mountPath: '/etc/sluice'
            }
          ]
          probes: [
            {
              // Config loaded, port open: usually within a second or two; App Configuration and
              // Redis (at most 1 s) are waited for before the port opens. Up to 2 + 10 × 3 s.
              type: 'Startup'
              httpGet: {
                path: '/startup'
                port: 8000
              }
              initialDelaySeconds: 2
              periodSeconds: 3
              timeoutSeconds: 2
              failureThreshold: 10
            }
            {
              // Out of the ingress within about 15 s of every backend's circuit opening; back in at
              // the first success.
              type: 'Readiness'
              httpGet: {
                path: '/readiness'
                port: 8000
              }
              periodSeconds: 5
              timeoutSeconds: 3
              failureThreshold: 3
              successThreshold: 1
            }
            {
              // Restarted only when the process stops answering for about 30 s: a busy gateway
              // still answers this at once, so generous limits avoid killing streams under load.
              type: 'Liveness'
              httpGet: {
                path: '/liveness'
                port: 8000
              }
              periodSeconds: 10
              timeoutSeconds: 5
              failureThreshold: 3
            }
          ]
        }
      ]
      scale: {
        minReplicas: minReplicas
        maxReplicas: maxReplicas
        rules: [
          {
            name: 'http-concurrency'
            http: {
              metadata: {
                concurrentRequests: string(concurrentRequestsPerReplica)
              }
            }
          }
        ]
      }
      volumes: [
        {
          name: 'config'
          storageType: 'Secret'
          secrets: [
            {
              secretRef: 'sluice-config'
              path: 'sluice.json'
            }
          ]
        }
      ]
    }
  }
  dependsOn: [
    // Key Vault references and the image pull need the roles first.
    keyVaultRole
    acrRole
  ]
}

@description('The gateway\'s URL.')
output url string = 'https://${app.properties.configuration.ingress.fqdn}'

@description('Client id of the gateway\'s managed identity (AZURE_CLIENT_ID in the container).')
output identityClientId string = identity.properties.clientId

@description('Principal id of the managed identity, for further role assignments (e.g. an Azure OpenAI account elsewhere).')
output identityPrincipalId string = identity.properties.principalId

@description('The termination grace given to replicas (s), from the config\'s server.shutdownGraceMs.')
output replicaGracePeriodSeconds int = terminationGracePeriodSeconds
