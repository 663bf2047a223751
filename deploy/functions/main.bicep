// Sluice on Azure Functions (Flex Consumption plan, Linux, Node 20): the catch-all HTTP function
// of adapters/azure-functions/main.ts, and the queue-triggered job runner for async requests, in a
// Function App with a user-assigned managed identity ("Cognitive Services OpenAI User" on an Azure
// OpenAI account), secrets as Key Vault references, and optionally Azure Cache for Redis (config
// `state.redis`).
//
//   az deployment group create -g <rg> -f deploy/functions/main.bicep -p @deploy/functions/main.parameters.example.json
//   npm ci && npm run build && npm prune --omit=dev
//   func azure functionapp publish <app> --build local    (.funcignore leaves sources, tests and docs out)
//
// App settings the gateway reads (adapters/azure-functions/main.ts, jobs.ts; adapters/node/*):
//   SLUICE_CONFIG        the config JSON (param `config`), or a file path
//   SLUICE_APPCONFIG_CONNECTION_STRING (+ _KEY, _LABEL, _SENTINEL, _POLL_MS)  instead: Azure App Configuration
//   AzureWebJobsStorage  the app's storage account: the host's own state, and the async jobs (container and
//                        queue `sluice-jobs`) unless SLUICE_JOBS_STORAGE names another account; it must be a
//                        connection string (the job store and the queue trigger use one)
//   SLUICE_JOBS_STORAGE  optional: another storage account for the jobs
// and, through `${NAME}` in the config: AZURE_CLIENT_ID (the identity), REDIS_URL (with deployRedis),
// each key of `keyVaultSecrets` (a Key Vault reference, resolved by the platform with the identity).
// Host settings: APPLICATIONINSIGHTS_CONNECTION_STRING (the host's telemetry), and
// AzureFunctionsJobHost__functionTimeout, which overrides host.json's functionTimeout (10 min there,
// the Consumption plan's maximum) with `jobTimeout` here: how long one async job may run.
//
// Platform limits that bear on a gateway:
//   - An HTTP-triggered execution must answer within 230 s (the front end's idle timeout), whatever
//     functionTimeout says; a stream that started in time runs on. Longer requests should go async:
//     `Prefer: respond-async` gets a 202 at once, the job runs in the queue-triggered function (bound
//     by functionTimeout, not by the 230 s) and the caller polls /_gateway/jobs/{id}.
//   - Flex Consumption scales instances per function group (HTTP, queue) and to zero when idle
//     (alwaysReady keeps instances warm); each instance keeps its own queue and budgets unless the
//     config has state.redis.

targetScope = 'resourceGroup'

@description('Prefix of every resource name, and of the Function App\'s (lower-case letters, digits, hyphens).')
@minLength(3)
@maxLength(18)
param name string = 'sluice'

@description('Region (one that offers the Flex Consumption plan).')
param location string = resourceGroup().location

@description('The gateway config (docs/config.schema.json) as a JSON object; secrets as \${NAME}, see the header.')
param config object

@description('App settings from Key Vault secrets: NAME → versionless secret URI (https://<vault>.vault.azure.net/secrets/<secret>).')
param keyVaultSecrets object = {}

@description('The Key Vault holding those secrets (this resource group); the identity gets Key Vault Secrets User on it. Empty: no Key Vault.')
param keyVaultName string = ''

@description('The Azure OpenAI account the gateway calls with its managed identity; the identity gets Cognitive Services OpenAI User on it. Empty: none.')
param openAiAccountName string = ''

@description('Resource group of that Azure OpenAI account.')
param openAiResourceGroup string = resourceGroup().name

@description('Instances at most (Flex Consumption: 40 to 1000).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Memory per instance, MB (Flex Consumption: 512, 2048 or 4096).')
@allowed([512, 2048, 4096])
param instanceMemoryMB int = 2048

@description('Instances of the HTTP function group kept warm (0: scale to zero, with a cold start on the first request).')
@minValue(0)
param alwaysReadyHttp int = 1

@description('How long one execution may run, async jobs included (hh:mm:ss; overrides host.json functionTimeout).')
param jobTimeout string = '01:00:00'

@description('Create an Azure Cache for Redis and pass its URL as REDIS_URL (config state.redis).')
param deployRedis bool = false

var suffix = uniqueString(resourceGroup().id, name)
// Storage account names: lower-case letters and digits only.
var compactName = toLower(replace(name, '-', ''))
var openAiUserRole = '5e0bd9bd-7b93-4f28-af87-19fc36ad61bd' // Cognitive Services OpenAI User
var keyVaultSecretsUserRole = '4633458b-17de-408a-b874-0445c86b69e6' // Key Vault Secrets User
var blobDataOwnerRole = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b' // Storage Blob Data Owner (the deployment package)
var deploymentContainer = 'app-package'

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

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: take('${compactName}fn${suffix}', 24)
  location: location
  sku: { name: 'Standard_LRS' }
  kind: 'StorageV2'
  properties: {
    minimumTlsVersion: 'TLS1_2'
    allowBlobPublicAccess: false
    supportsHttpsTrafficOnly: true
  }
}

resource blobs 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource packageContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobs
  name: deploymentContainer
}

resource packageRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identity.id, blobDataOwnerRole)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataOwnerRole)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
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

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: '${name}-insights'
  location: location
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
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

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: '${name}-plan'
  location: location
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

var storageConnection = 'DefaultEndpointsProtocol=https;AccountName=${storage.name};AccountKey=${storage.listKeys().keys[0].value};EndpointSuffix=${az.environment().suffixes.storage}'
var keyVaultSettings = [for s in items(keyVaultSecrets): {
  name: s.key
  value: '@Microsoft.KeyVault(SecretUri=${s.value})'
}]
var redisSettings = deployRedis ? [
  {
    name: 'REDIS_URL'
    value: 'rediss://:${redis!.listKeys().primaryKey}@${redis!.properties.hostName}:${redis!.properties.sslPort}'
  }
] : []

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: '${name}-${suffix}'
  location: location
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    // Key Vault references in app settings are resolved with this identity.
    keyVaultReferenceIdentity: identity.id
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainer}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identity.id
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
        alwaysReady: alwaysReadyHttp > 0 ? [
          {
            name: 'http'
            instanceCount: alwaysReadyHttp
          }
        ] : []
      }
      runtime: {
        name: 'node'
        version: '20'
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      appSettings: concat([
        {
          name: 'AzureWebJobsStorage'
          value: storageConnection
        }
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: insights.properties.ConnectionString
        }
        {
          name: 'AzureFunctionsJobHost__functionTimeout'
          value: jobTimeout
        }
        {
          name: 'SLUICE_CONFIG'
          value: string(config)
        }
        {
          name: 'AZURE_CLIENT_ID'
          value: identity.properties.clientId
        }
      ], keyVaultSettings, redisSettings)
    }
  }
  dependsOn: [
    packageContainer
    packageRole
    keyVaultRole
  ]
}

@description('The gateway\'s URL (the HTTP function answers every path: host.json sets an empty route prefix).')
output url string = 'https://${site.properties.defaultHostName}'

@description('The Function App\'s name, for `func azure functionapp publish`.')
output functionAppName string = site.name

@description('Client id of the gateway\'s managed identity (AZURE_CLIENT_ID).')
output identityClientId string = identity.properties.clientId

@description('Principal id of the managed identity, for further role assignments.')
output identityPrincipalId string = identity.properties.principalId
