-- Argo CD health check for regroup.dev/StatefulJob.
-- Install in argocd-cm as resource.customizations.health.regroup.dev_StatefulJob
-- (see argocd-cm-patch.yaml beside this file).
local hs = {}
if obj.status == nil or obj.metadata.generation ~= obj.status.observedGeneration then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the current spec"
  return hs
end
local conditions = {}
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    conditions[c.type] = c
  end
end
local phase = obj.status.phase or "Pending"
if conditions["Degraded"] ~= nil and conditions["Degraded"].status == "True" then
  hs.status = "Degraded"
  hs.message = conditions["Degraded"].reason .. ": " .. conditions["Degraded"].message
  return hs
end
if phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = "Suspended (spec.suspend)"
  return hs
end
if phase == "Running" and conditions["Ready"] ~= nil and conditions["Ready"].status == "True" then
  hs.status = "Healthy"
  hs.message = conditions["Ready"].message
  return hs
end
hs.status = "Progressing"
if conditions["Progressing"] ~= nil and conditions["Progressing"].status == "True" then
  hs.message = conditions["Progressing"].message
else
  hs.message = "Phase " .. phase
end
return hs
