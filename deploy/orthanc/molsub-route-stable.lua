-- molsub-node auto-routing for Orthanc, once a study is stable (docs/orthanc.md).
--
-- The alternative to molsub-route.lua: nothing is sent while a study is still arriving; when
-- Orthanc has received nothing new for the study for StableAge seconds, its MG images and lesion
-- SEGs that were not routed before go to the modality "molsub" in one job (one association).
--
-- The node's results arriving make the study unstable again, so OnStableStudy fires a second
-- time StableAge seconds later. Routed instances carry the user metadata "MolsubRouted"
-- (declared in orthanc.json, "UserMetadata"), and results are never inputs, so that second call
-- finds nothing to send and sends nothing. Only an MG or SEG added to the study later (a second
-- lesion drawn after the first results) goes out then, alone.
--
-- Needs in orthanc.json: "UserMetadata" : { "MolsubRouted" : 1024 } (any free 1024..65535).

MOLSUB_MODALITY = 'molsub'              -- the DicomModalities entry of the node
MOLSUB_AET = 'MOLSUB'                   -- [node] ae_title in the node's node.toml
MOLSUB_MANUFACTURER = 'molsub-node open-source project'
ROUTED = 'MolsubRouted'                 -- user metadata set on every instance sent

MG_CLASSES = {
  ['1.2.840.10008.5.1.4.1.1.1.2'] = true,    -- Digital Mammography X-Ray, For Presentation
  ['1.2.840.10008.5.1.4.1.1.1.2.1'] = true,  -- Digital Mammography X-Ray, For Processing
}
SEG_CLASS = '1.2.840.10008.5.1.4.1.1.66.4'
NODE_CLASSES = {
  ['1.2.840.10008.5.1.4.1.1.88.34'] = true,  -- Comprehensive 3D SR
  ['1.2.840.10008.5.1.4.1.1.7'] = true,      -- Secondary Capture
  [SEG_CLASS] = true,                         -- heatmap SEG
}

local function Trim(s)
  return (tostring(s or ''):gsub('^%s+', ''):gsub('%s+$', ''))
end

-- Whether the instance (its metadata and, for the node's SOP classes, its tags) is an input.
local function IsInput(instanceId, meta)
  if meta[ROUTED] ~= nil then
    return false                                      -- sent before
  end
  if Trim(meta['RemoteAET']) == MOLSUB_AET then
    return false                                      -- stored by the node: its results
  end
  local class = Trim(meta['SopClassUid'])
  if MG_CLASSES[class] then
    return true
  end
  if class ~= SEG_CLASS then
    return false
  end
  local tags = ParseJson(RestApiGet('/instances/' .. instanceId .. '/simplified-tags'))
  if Trim(tags['Manufacturer']) == MOLSUB_MANUFACTURER then
    return false
  end
  local equipment = tags['ContributingEquipmentSequence']
  if type(equipment) == 'table' then
    for _, item in pairs(equipment) do
      if type(item) == 'table' and Trim(item['Manufacturer']) == MOLSUB_MANUFACTURER then
        return false
      end
    end
  end
  return string.upper(Trim(tags['SegmentationType'])) ~= 'FRACTIONAL'
end

function OnStableStudy(studyId, tags, metadata)
  local send = {}
  local instances = ParseJson(RestApiGet('/studies/' .. studyId .. '/instances'))
  for _, instance in pairs(instances) do
    local id = instance['ID']
    local meta = ParseJson(RestApiGet('/instances/' .. id .. '/metadata?expand'))
    if IsInput(id, meta) then
      table.insert(send, id)
    end
  end
  if #send == 0 then
    return
  end
  -- No print(): Lua's output is a warning line in Orthanc's log; the job is in /jobs.
  local job = ParseJson(RestApiPost('/modalities/' .. MOLSUB_MODALITY .. '/store',
    DumpJson({ Resources = send, Synchronous = false }, true)))
  for _, id in pairs(send) do
    RestApiPut('/instances/' .. id .. '/metadata/' .. ROUTED, tostring(job['ID']))
  end
end
