// One role for a managed identity on a resource of this resource group (deployed as a module so
// that the resource may live in another resource group than the gateway).
//   kind 'openai': a Cognitive Services (Azure OpenAI / AI Foundry) account
//   kind 'keyvault': a Key Vault
//   kind 'acr': a container registry

@allowed(['openai', 'keyvault', 'acr'])
param kind string

@description('Name of the account, vault or registry, in the resource group this module is deployed to.')
param resourceName string

@description('Principal (object) id of the managed identity.')
param principalId string

@description('Role definition id (a GUID), e.g. 5e0bd9bd-7b93-4f28-af87-19fc36ad61bd for Cognitive Services OpenAI User.')
param roleDefinitionId string

resource openai 'Microsoft.CognitiveServices/accounts@2024-10-01' existing = if (kind == 'openai') {
  name: resourceName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = if (kind == 'keyvault') {
  name: resourceName
}

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' existing = if (kind == 'acr') {
  name: resourceName
}

resource openaiRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (kind == 'openai') {
  name: guid(openai.id, principalId, roleDefinitionId)
  scope: openai
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleDefinitionId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource vaultRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (kind == 'keyvault') {
  name: guid(vault.id, principalId, roleDefinitionId)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleDefinitionId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource registryRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (kind == 'acr') {
  name: guid(registry.id, principalId, roleDefinitionId)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleDefinitionId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
